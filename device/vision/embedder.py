"""Card embedder on the device: canonical crop → one L2-normalised vector comparable with the catalog.

The TFLite model has two inputs (whole card 96×128, footer strip 192×32; RGB in [0, 1]) and two outputs
(global 128-d, strip 64-d, unnormalised). ``combine`` normalises both and concatenates them with weights
√(1-w), √w so one dot product with a catalog row = (1-w)·cos_global + w·cos_strip. ``w`` comes from the
bundle manifest (``embedder.strip_weight``).
"""

from __future__ import annotations

import numpy as np

from device.vision.geometry import GLOBAL_SIZE, STRIP_SIZE, embedder_views


def combine(g: np.ndarray, s: np.ndarray, w: float) -> np.ndarray:
    g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-8)
    s = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-8)
    return np.concatenate([g * np.sqrt(1 - w), s * np.sqrt(w)], axis=-1).astype(np.float32)


def to_input(view: np.ndarray) -> np.ndarray:
    """BGR uint8 HWC → float32 NHWC RGB in [0, 1]."""
    return (view[None, ..., ::-1].astype(np.float32)) * (1.0 / 255.0)


class Embedder:
    def __init__(self, model_path: str, strip_weight: float, num_threads: int | None = None):
        from device.vision.runtime import TFLiteModel

        self.model = TFLiteModel(model_path, num_threads)
        self.strip_weight = float(strip_weight)
        shapes = self.model.input_shapes()
        # map inputs by shape (converters do not keep argument order reliably)
        gshape = (1, GLOBAL_SIZE[1], GLOBAL_SIZE[0], 3)
        sshape = (1, STRIP_SIZE[1], STRIP_SIZE[0], 3)
        if sorted(shapes) != sorted([gshape, sshape]):
            raise ValueError(f"{model_path}: unexpected input shapes {shapes}, want {gshape} and {sshape}")
        self._g_first = shapes[0] == gshape
        oshapes = [tuple(d["shape"]) for d in self.model.outputs]
        self._g_out = 0 if oshapes[0][-1] >= oshapes[1][-1] else 1  # the global vector is the longer one

    def embed_views(self, g: np.ndarray, s: np.ndarray) -> np.ndarray:
        gi, si = to_input(g), to_input(s)
        outs = self.model.run([gi, si] if self._g_first else [si, gi])
        go, so = outs[self._g_out], outs[1 - self._g_out]
        return combine(go.reshape(1, -1), so.reshape(1, -1), self.strip_weight)[0]

    def embed(self, crop: np.ndarray) -> np.ndarray:
        """Embedding of a canonical crop (``device.vision.geometry.rectify`` output)."""
        return self.embed_views(*embedder_views(crop))
