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
STRIP_WEIGHT = 0.2  # weight of the strip cosine in the combined score (tuned on held-out captures)


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def thumb(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Average-pooled colour thumbnail, flattened (C, H, W order). The closed-form fit centres it per
    channel (invariance to additive brightness) and folds that centring into ``lin`` — a linear map — so
    the int8 graph has no MEAN/SUB ops; with the final L2 normalisation of a bias-free linear map the
    embedding is also invariant to global gain and contrast."""
    return pool(x).reshape(x.shape[0], -1)


class OrientedEdges(nn.Module):
    """3×3 Sobel filters at 8 orientations on the grey image, rectified: a HOG-like
    response map. Pooled into cells it describes digits and set-symbol outlines far better than raw pixels,
    and it is a plain Conv2d + ReLU in the int8 graph."""

    def __init__(self, n: int = 8):
        super().__init__()
        import math

        # unnormalised Sobel (gain 8 over the unit-gain /8 version): the pooled edge cells are concatenated
        # with the colour thumbnail and int8 gives a concatenation one scale — at unit gain the edge cells
        # (≈0.02) would get a handful of quantisation steps next to the thumbnail's 0..1
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        ky = kx.T
        w = torch.stack([math.cos(math.pi * k / n) * kx + math.sin(math.pi * k / n) * ky for k in range(n)])
        # no padding: an explicit PAD on the model input, shared with other padded convs, breaks int8
        # conversion (PAD must keep its input's scale); the one-pixel border is simply not described
        self.conv = nn.Conv2d(3, n, 3, 1, 0, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(w[:, None].repeat(1, 3, 1, 1) / 3)  # grey = mean of RGB
        # a regular parameter (the quantiser annotates parameter convs); fine-tuning may adapt it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class _Branch(nn.Module):
    """A closed-form linear head on fixed features (edges + colour thumbnail), plus an optional CNN path.

    Subclasses set ``pool``, ``edges``, ``edge_pool``, ``lin``, ``features`` and ``fc``.
    """

    def lin_features(self, x: torch.Tensor) -> torch.Tensor:
        e = self.edge_pool(self.edges(x)).reshape(x.shape[0], -1)
        return torch.cat([e, thumb(x, self.pool)], 1)

    use_cnn = True  # False: the CNN path is zero (closed-form only) and is left out of the exported graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(self.lin_features(x))
        if self.use_cnn:
            y = y + self.fc(self.features(x).reshape(x.shape[0], -1))
        return y


class GlobalBranch(_Branch):
    THUMB_POOL = 8  # 128×96 → 16×12 thumbnail (576 values)
    EDGE_POOL = 8  # 126×94 edge map → 15×11 cells × 8 orientations (1320 values)
    N_EDGE = 8 * 15 * 11
    THUMB_SHAPE = (3, 16, 12)

    def __init__(self, dim: int = GLOBAL_DIM):
        super().__init__()
        self.pool = nn.AvgPool2d(self.THUMB_POOL)
        self.edges = OrientedEdges()
        self.edge_pool = nn.AvgPool2d(self.EDGE_POOL)
        self.lin = nn.Linear(self.N_EDGE + 3 * 16 * 12, dim, bias=False)
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



class StripBranch(_Branch):
    THUMB_POOL = (4, 8)  # 32×192 → 8×24 colour thumbnail (576 values)
    EDGE_POOL = (4, 4)  # 30×190 edge map → 7×47 cells × 8 orientations (2632 values)
    N_EDGE = 8 * 7 * 47
    THUMB_SHAPE = (3, 8, 24)

    def __init__(self, dim: int = STRIP_DIM):
        super().__init__()
        self.pool = nn.AvgPool2d(self.THUMB_POOL)
        self.edges = OrientedEdges()
        self.edge_pool = nn.AvgPool2d(self.EDGE_POOL)
        self.lin = nn.Linear(self.N_EDGE + 3 * 8 * 24, dim, bias=False)
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



class CardEmbedder(nn.Module):
    """forward(global [N,3,128,96], strip [N,3,32,192]) → (g [N,128], s [N,64]); inputs are RGB in [0,1]."""

    def __init__(self):
        super().__init__()
        self.g = GlobalBranch()
        self.s = StripBranch()

    def forward(self, glob: torch.Tensor, strip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g(glob), self.s(strip)

    def compact_state(self) -> dict:
        """The weights the exported graph uses (CNN paths only when fine-tuned), as float16: small enough
        to commit next to the demo bundle for the TFLite ↔ PyTorch parity test."""
        self.prune_unused()
        keep = {k: v for k, v in self.state_dict().items()
                if ".lin." in k or ".edges." in k or (getattr(self, k.split(".")[0]).use_cnn and "num_batches" not in k)}
        return {k: v.half() if v.is_floating_point() else v for k, v in keep.items()}

    @classmethod
    def from_compact(cls, state: dict) -> "CardEmbedder":
        m = cls()
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
        return m.prune_unused().eval()

    def prune_unused(self) -> "CardEmbedder":
        """Drop CNN paths whose output layer is all zeros (not fine-tuned yet): same function, less compute."""
        for b in (self.g, self.s):
            b.use_cnn = bool(b.fc.weight.abs().sum() > 0)
        return self


def combine(g: torch.Tensor, s: torch.Tensor, w: float = STRIP_WEIGHT) -> torch.Tensor:
    return torch.cat([F.normalize(g, dim=1) * (1 - w) ** 0.5, F.normalize(s, dim=1) * w ** 0.5], 1)
