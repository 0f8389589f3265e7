"""Export the PyTorch detector / embedder to full-integer int8 TFLite.

    python -m models.export --kind embedder --checkpoint var/train/embedder/embedder.pt \
        --calib var/build/calib_embedder.npz --out var/build/embedder.tflite

Path 1 (preferred): ``litert-torch`` — torch.export → PT2E static int8 quantisation (per-channel weights,
per-tensor activations, calibrated on real samples) → LiteRT flatbuffer. I/O is NHWC float32 with
QUANTIZE/DEQUANTIZE at the edges; every op inside runs int8.
Path 2 (fallback, only when litert-torch fails): torch → ONNX → ``onnx2tf`` SavedModel → TensorFlow
``TFLiteConverter`` with a representative dataset and ``TFLITE_BUILTINS_INT8``.

Neither converter belongs on the device or the server: litert-torch lives in the ``train`` extra (it pins
its own pydantic/jax, so ``models.build_bundle`` can run this module in a separate interpreter — see
``export_python()``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def export_python() -> str:
    """An interpreter that can import litert_torch: this one, $SCANEMON_EXPORT_PYTHON, or var/venv-export."""
    cands = [os.environ.get("SCANEMON_EXPORT_PYTHON"), sys.executable, "var/venv-export/bin/python"]
    for c in cands:
        if not c or not Path(c).exists():
            continue
        r = subprocess.run([c, "-c", "import litert_torch"], capture_output=True)
        if r.returncode == 0:
            return c
    return sys.executable


def build_module(kind: str, checkpoint: str):
    import torch

    if kind == "embedder":
        from models.embedder.model import CardEmbedder

        m = CardEmbedder()
        m.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        m.prune_unused()
    elif kind == "detector":
        from models.detector.model import CardDetector

        m = CardDetector()
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    if kind == "detector":
        m.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    m.eval()

    class NHWC(torch.nn.Module):
        """Channel-last I/O for the device (images arrive HWC); transposes fold into the graph."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            out = self.inner(*[x.permute(0, 3, 1, 2) for x in xs])
            if isinstance(out, tuple):
                return out
            return out.permute(0, 2, 3, 1)

    return NHWC(m).eval()


def export_litert(kind: str, checkpoint: str, calib: list[tuple[np.ndarray, ...]], out: str) -> None:
    import torch
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = build_module(kind, checkpoint)
    sample = tuple(torch.from_numpy(a[:1]) for a in calib[0])
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    exported = torch.export.export(model, sample).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calib:
            for i in range(len(batch[0])):
                prepared(*[torch.from_numpy(a[i:i + 1]) for a in batch])
    quantized = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(out)


def export_tf(kind: str, checkpoint: str, calib: list[tuple[np.ndarray, ...]], out: str) -> None:
    import tempfile

    import onnx2tf  # type: ignore
    import tensorflow as tf  # type: ignore
    import torch

    model = build_module(kind, checkpoint)
    sample = tuple(torch.from_numpy(a[:1]) for a in calib[0])
    with tempfile.TemporaryDirectory() as td:
        onnx_path = str(Path(td) / "m.onnx")
        torch.onnx.export(model, sample, onnx_path, opset_version=17)
        onnx2tf.convert(input_onnx_file_path=onnx_path, output_folder_path=str(Path(td) / "sm"),
                        keep_shape_absolutely_input_names=None, non_verbose=True)
        conv = tf.lite.TFLiteConverter.from_saved_model(str(Path(td) / "sm"))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def rep():
            for batch in calib:
                for i in range(len(batch[0])):
                    yield [a[i:i + 1] for a in batch]

        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        Path(out).write_bytes(conv.convert())


def load_calib(path: str) -> list[tuple[np.ndarray, ...]]:
    d = np.load(path)
    keys = sorted(k for k in d.files if k.startswith("in"))
    arrays = [d[k].astype(np.float32) for k in keys]
    n = len(arrays[0])
    bs = 16
    return [tuple(a[i:i + bs] for a in arrays) for i in range(0, n, bs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["embedder", "detector"], required=True)
    ap.add_argument("--checkpoint", required=True, help="state_dict .pt")
    ap.add_argument("--calib", required=True, help=".npz with in0[, in1] NHWC float32 calibration inputs")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    calib = load_calib(a.calib)
    errors = []
    for name, fn in (("litert-torch", export_litert), ("tensorflow", export_tf)):
        try:
            fn(a.kind, a.checkpoint, calib, a.out)
            print(json.dumps({"exported": a.out, "via": name, "bytes": Path(a.out).stat().st_size}))
            return 0
        except Exception as exc:  # try the next converter, report all failures at the end
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    print("export failed:\n  " + "\n  ".join(errors), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
