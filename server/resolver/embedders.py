"""Server embedders: a card-face image (BGR uint8, portrait) or a text -> an L2-normalised vector.

One small ABC and one class per backend:

* ``OpenClipEmbedder(model_name, pretrained)``: any open_clip architecture; ``pretrained`` is a hub tag
  (``laion2b_s34b_b79k``) or a local checkpoint file (a plain open_clip ``state_dict``). This is the path a
  user with real CLIP weights takes, and the one ``models/server_model`` fine-tunes.
* ``OwnCheckpointEmbedder(path)``: our compact checkpoint (``models/server_model/checkpoints/*.pt``): the
  open_clip config travels inside the file, weights are fp16 and the token-embedding table keeps only
  the rows training touched (card-name tokens), so a from-scratch model fits in a few MB.

Preprocessing is the same everywhere (``preprocess_batch``): the card face is squashed to the model's
square input (the aspect is fixed at 2.5:3.5, so no information is lost by squashing rather than padding).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "models" / "server_model" / "configs"
DEFAULT_MODEL_NAME = "scanemon-tiny-vit"
CHECKPOINT_FORMAT = "scanemon-openclip-v1"
# Default checkpoint shipped with the repo (small, from-scratch, trained by models/server_model/train.py).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "server_model" / "checkpoints" / "scanemon-tiny-vit.pt"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def register_model_configs() -> None:
    """Make our architecture JSONs (``models/server_model/configs``) known to open_clip; idempotent."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIG_PATHS

    if CONFIG_DIR.is_dir() and CONFIG_DIR not in _MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


def register_config(name: str, cfg: dict) -> None:
    """Register one architecture from a dict (the config stored inside our checkpoints)."""
    from open_clip.factory import _MODEL_CONFIGS

    _MODEL_CONFIGS[name] = json.loads(json.dumps(cfg))


def preprocess_batch(images: Sequence[np.ndarray], size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
    """BGR uint8 card faces -> float tensor (N, 3, size, size), normalised like CLIP."""
    import torch

    arr = np.empty((len(images), size, size, 3), np.float32)
    for i, img in enumerate(images):
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        arr[i] = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
    arr = (arr / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Embedder(abc.ABC):
    """Image/text -> unit vectors. ``model_id`` names the weights so an index knows what built it."""

    dim: int
    model_id: str

    @abc.abstractmethod
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32, L2-normalised, for BGR uint8 card faces."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32, L2-normalised; text search over the catalog embeddings."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower")


class _OpenClipBase(Embedder):
    """Shared encode code for open_clip models (CPU inference, batches of ``batch_size``)."""

    batch_size = 64
    # One request = one scan: a single intra-op thread avoids oversubscription when requests run in parallel
    # (and on a shared 2-core box, spinning thread pools are what makes latency explode).
    threads = 1

    def _setup(self, model, model_name: str, model_id: str, image_size: int, mean, std) -> None:
        import open_clip

        model.eval()
        self.model = model
        self.model_name = model_name
        self.model_id = model_id
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       else self.embed_images([np.zeros((64, 48, 3), np.uint8)]).shape[1])

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = preprocess_batch(images[i:i + self.batch_size], self.image_size, self.mean, self.std)
                out.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tok = self.tokenizer(list(texts))
            return torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1).numpy()


class OpenClipEmbedder(_OpenClipBase):
    """An open_clip model by name; ``pretrained`` = hub tag, local checkpoint path, or None (random init)."""

    def __init__(self, model_name: str = DEFAULT_MODEL_NAME, pretrained: str | Path | None = None,
                 device: str = "cpu"):
        import open_clip

        register_model_configs()
        pre = str(pretrained) if pretrained else None
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pre, device=device)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        if pre and Path(pre).is_file():
            model_id = f"{model_name}@{_file_digest(Path(pre))}"
        else:
            model_id = f"{model_name}@{pre or 'random'}"
        self._setup(model, model_name, model_id, size, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on the root logger that a model built without hub weights is random; true for a moment
    only when our own checkpoint is loaded right after."""
    f = _DropRandomInitWarning()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


class OwnCheckpointEmbedder(_OpenClipBase):
    """Our compact checkpoint (see module doc); written by ``save_compact_checkpoint``."""

    def __init__(self, path: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu"):
        import open_clip
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"server model checkpoint not found: {path} "
                                    "(train one: python -m models.server_model.train --help)")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format={ck.get('format')!r})")
        name = ck["model_name"]
        register_config(name, ck["model_cfg"])
        with _quiet_random_init():  # our weights are loaded on the next line: open_clip's warning would mislead
            model = open_clip.create_model(name, device=device)
        model.load_state_dict(expand_state_dict(ck, model.state_dict()), strict=True)
        self.meta: dict[str, Any] = ck.get("meta", {})
        self._setup(model, name, f"{name}@{_file_digest(path)}", ck["model_cfg"]["vision_cfg"]["image_size"],
                    ck.get("mean", OPENAI_MEAN), ck.get("std", OPENAI_STD))


def save_compact_checkpoint(model, model_name: str, model_cfg: dict, path: str | Path,
                            used_tokens: np.ndarray | None = None, meta: dict | None = None) -> Path:
    """fp16 weights; the token-embedding table keeps only ``used_tokens`` rows (others load as zeros)."""
    import torch

    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    ck: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model_name": model_name, "model_cfg": model_cfg,
                          "meta": meta or {}}
    if used_tokens is not None and "token_embedding.weight" in sd:
        idx = torch.as_tensor(np.unique(used_tokens), dtype=torch.long)
        ck["token_rows"] = idx
        ck["token_shape"] = list(sd["token_embedding.weight"].shape)
        sd["token_embedding.weight"] = sd["token_embedding.weight"][idx]
    ck["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)
    return path


def expand_state_dict(ck: dict, reference: dict) -> dict:
    """Inverse of the compaction: fp32 tensors, full token table with zero rows where not stored."""
    import torch

    sd = {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    if "token_rows" in ck:
        full = torch.zeros(ck["token_shape"], dtype=torch.float32)
        full[ck["token_rows"]] = sd["token_embedding.weight"]
        sd["token_embedding.weight"] = full
    for k, ref in reference.items():  # buffers not saved by older versions (e.g. attn masks) keep defaults
        if k not in sd:
            sd[k] = ref
    return sd


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_embedder(checkpoint: str | Path | None = None, model_name: str | None = None,
                  pretrained: str | None = None) -> Embedder:
    """The configured embedder: open_clip by name/tag when ``model_name`` is set, else our checkpoint."""
    if model_name:
        return OpenClipEmbedder(model_name, pretrained)
    return OwnCheckpointEmbedder(checkpoint or DEFAULT_CHECKPOINT)


__all__ = ["Embedder", "OpenClipEmbedder", "OwnCheckpointEmbedder", "load_embedder", "preprocess_batch",
           "register_model_configs", "save_compact_checkpoint", "DEFAULT_CHECKPOINT", "DEFAULT_MODEL_NAME"]
