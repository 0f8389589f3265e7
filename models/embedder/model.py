"""The card embedder: two small plain-PyTorch CNN branches (no torchvision), int8-export friendly.

* global branch: the whole rectified card at 96×128 → 128-d (artwork, layout, name);
* strip branch: the footer band at 192×32 → 64-d (set symbol, collector number, rarity mark): what
  separates reprints of one illustration.

Each branch = a linear projection of a mean-centred colour thumbnail (``lin``: initialised in closed form
by ``models.embedder.closed_form`` — whitening of capture↔catalog differences followed by the directions
that separate hard negatives, i.e. LDA/KISSME-style metric learning) **plus** a CNN path (``fc``, zero at
init) that InfoNCE fine-tuning grows. On two shared CPU cores the closed form gives a strong start in
minutes; backprop then adds what a linear map of pixels cannot express.

The network returns the two raw (unnormalised) vectors; ``combine`` normalises each and concatenates them
with weights so that one dot product = ``(1-w)·cos_global + w·cos_strip``. The device does the same in
numpy (``device.vision.embedder.combine``), which keeps L2-normalisation out of the int8 graph.

Only ops that convert cleanly to full-integer TFLite: Conv2d (+BN folded), ReLU, AvgPool2d with a fixed
kernel, reshape, Linear.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

GLOBAL_DIM = 128
STRIP_DIM = 64
STRIP_WEIGHT = 0.4  # weight of the strip cosine in the combined score


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def centred_thumb(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Average-pooled thumbnail minus its per-channel mean, flattened: invariant to additive brightness,
    and (after the final L2 normalisation of a bias-free linear map) to global gain and contrast."""
    t = pool(x)
    t = t - t.mean(dim=(2, 3), keepdim=True)
    return t.reshape(t.shape[0], -1)


class GlobalBranch(nn.Module):
    THUMB_POOL = 8  # 128×96 → 16×12 thumbnail (576 values)

    def __init__(self, dim: int = GLOBAL_DIM):
        super().__init__()
        self.pool = nn.AvgPool2d(self.THUMB_POOL)
        self.lin = nn.Linear(3 * 16 * 12, dim, bias=False)
        # input 3×128×96 (H×W); ~12 M MACs.
        self.features = nn.Sequential(
            nn.AvgPool2d(2),              # 64×48
            conv_bn(3, 24, 2),            # 32×24
            conv_bn(24, 48, 2),           # 16×12
            conv_bn(48, 48),
            conv_bn(48, 96, 2),           # 8×6
            conv_bn(96, 96),
            nn.AvgPool2d(2),              # 4×3: keep the coarse layout (where art / text / footer are)
            conv_bn(96, 48, 1, k=1),
        )
        self.fc = nn.Linear(48 * 4 * 3, dim, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(centred_thumb(x, self.pool)) + self.fc(self.features(x).reshape(x.shape[0], -1))


class StripBranch(nn.Module):
    THUMB_POOL = (2, 4)  # 32×192 → 16×48 thumbnail (2304 values)

    def __init__(self, dim: int = STRIP_DIM):
        super().__init__()
        self.pool = nn.AvgPool2d(self.THUMB_POOL)
        self.lin = nn.Linear(3 * 16 * 48, dim, bias=False)
        # input 3×32×192 (H×W); ~11 M MACs.
        self.features = nn.Sequential(
            conv_bn(3, 16, 2),            # 16×96
            conv_bn(16, 32, 2),           # 8×48
            conv_bn(32, 32),
            conv_bn(32, 64, 2),           # 4×24
            conv_bn(64, 64),
            nn.AvgPool2d((2, 3)),         # 2×8: where along the footer matters (symbol left/right…)
            conv_bn(64, 32, 1, k=1),
        )
        self.fc = nn.Linear(32 * 2 * 8, dim, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(centred_thumb(x, self.pool)) + self.fc(self.features(x).reshape(x.shape[0], -1))


class CardEmbedder(nn.Module):
    """forward(global [N,3,128,96], strip [N,3,32,192]) → (g [N,128], s [N,64]); inputs are RGB in [0,1]."""

    def __init__(self):
        super().__init__()
        self.g = GlobalBranch()
        self.s = StripBranch()

    def forward(self, glob: torch.Tensor, strip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g(glob), self.s(strip)


def combine(g: torch.Tensor, s: torch.Tensor, w: float = STRIP_WEIGHT) -> torch.Tensor:
    return torch.cat([F.normalize(g, dim=1) * (1 - w) ** 0.5, F.normalize(s, dim=1) * w ** 0.5], 1)
