"""TFLite runtime: LiteRT (``ai_edge_litert``) with the legacy ``tflite_runtime`` as fallback.

``TFLiteModel`` hides input/output quantisation: callers pass float32 arrays in the model's float domain
(e.g. RGB in [0, 1]) and get float32 back, whether the graph has float I/O with int8 inside or int8 I/O.
"""

from __future__ import annotations

import os

import numpy as np


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def interpreter_class():
    """The Interpreter class: LiteRT first, tflite_runtime second."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore

        return Interpreter
    except ImportError as exc:
        raise ImportError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from exc


class TFLiteModel:
    def __init__(self, path: str, num_threads: int | None = None):
        self.path = str(path)
        self.num_threads = int(num_threads or default_threads())
        Interpreter = interpreter_class()
        self.interp = Interpreter(model_path=self.path, num_threads=self.num_threads)
        self.interp.allocate_tensors()
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(d["shape"]) for d in self.inputs]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"{self.path}: expects {len(self.inputs)} inputs, got {len(arrays)}")
        for d, a in zip(self.inputs, arrays):
            if tuple(a.shape) != tuple(d["shape"]):
                raise ValueError(f"{self.path}: input {d['name']} wants {tuple(d['shape'])}, got {tuple(a.shape)}")
            if d["dtype"] in (np.int8, np.uint8):
                scale, zp = d["quantization"]
                info = np.iinfo(d["dtype"])
                q = np.clip(np.round(a / scale + zp), info.min, info.max).astype(d["dtype"])
                self.interp.set_tensor(d["index"], q)
            else:
                self.interp.set_tensor(d["index"], a.astype(d["dtype"]))
        self.interp.invoke()
        out = []
        for d in self.outputs:
            v = self.interp.get_tensor(d["index"])
            if d["dtype"] in (np.int8, np.uint8):
                scale, zp = d["quantization"]
                v = (v.astype(np.float32) - zp) * scale
            out.append(np.asarray(v, np.float32))
        return out

    def input_names(self) -> list[str]:
        return [d["name"] for d in self.inputs]
