"""The card detector CNN: letterboxed 160×120 RGB in [0, 1] → 3 logit maps at 40×30 (face, kernel, top).

A small U-Net in plain PyTorch (Conv2d + BN + ReLU, bilinear upsampling, concatenation): ~25 M MACs,
full-integer int8 friendly. Decoding lives on the device side (``device.vision.detector.decode_maps``).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from models.embedder.model import conv_bn


class CardDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = conv_bn(3, 16, 2)                                   # 60×80
        self.e2 = conv_bn(16, 32, 2)                                  # 30×40
        self.e3 = nn.Sequential(conv_bn(32, 48, 2), conv_bn(48, 48))  # 15×20
        self.e4 = nn.Sequential(conv_bn(48, 64, 2), conv_bn(64, 64))  # 8×10
        self.d3 = nn.Sequential(conv_bn(64 + 48, 48, 1, k=1), conv_bn(48, 48))
        self.d2 = nn.Sequential(conv_bn(48 + 32, 32, 1, k=1), conv_bn(32, 24))
        self.head = nn.Conv2d(24, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.e1(x)
        x2 = self.e2(x1)
        x3 = self.e3(x2)
        x4 = self.e4(x3)
        u3 = F.interpolate(x4, size=x3.shape[2:], mode="bilinear", align_corners=False)
        y3 = self.d3(torch.cat([u3, x3], 1))
        u2 = F.interpolate(y3, size=x2.shape[2:], mode="bilinear", align_corners=False)
        y2 = self.d2(torch.cat([u2, x2], 1))
        return self.head(y2)
