"""Recover a ``CardDetector`` state_dict from an exported int8 ``detector.tflite``.

    python -m models.detector.from_tflite --tflite models/bundles/demo/detector.tflite \
        --out var/train/detector/from_bundle.pt

The demo bundle's detector was trained before its PyTorch checkpoint was kept; this makes fine-tuning
start from the shipped model instead of from scratch. The int8 graph holds each conv with its batch norm
folded in (per-channel int8 weights, int32 bias, ReLU fused), in the order of ``CardDetector``'s convs;
the weights are dequantised into the convs and every BatchNorm is set to the identity with the folded
bias (``running_var = 1 − eps``), so the float model computes what the int8 one approximates. Train it
with the BatchNorms frozen (``models.detector.train --init … --freeze-bn``): their statistics are gone.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from models.detector.model import CardDetector


def tflite_convs(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight OIHW float32, bias float32) of every CONV_2D, graph order."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover
        from tflite_runtime.interpreter import Interpreter  # type: ignore

    it = Interpreter(path)
    it.allocate_tensors()
    td = {t["index"]: t for t in it.get_tensor_details()}

    def deq(i: int, axis: int) -> np.ndarray:
        t = td[i]
        q = it.get_tensor(i).astype(np.float32)
        qp = t["quantization_parameters"]
        sc, zp = np.asarray(qp["scales"], np.float32), np.asarray(qp["zero_points"], np.float32)
        if sc.size == 0:
            return q
        shape = [1] * q.ndim
        if sc.size > 1:
            shape[axis] = -1
        return (q - zp.reshape(shape)) * sc.reshape(shape)

    out = []
    for op in it._get_ops_details():
        if op["op_name"] != "CONV_2D":
            continue
        _, wi, bi = op["inputs"][:3]
        w = deq(wi, 0).transpose(0, 3, 1, 2)  # OHWI → OIHW
        b = deq(bi, 0) if bi >= 0 else np.zeros(w.shape[0], np.float32)
        out.append((np.ascontiguousarray(w), b))
    return out


def state_from_tflite(path: str) -> dict[str, torch.Tensor]:
    model = CardDetector()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = {id(c): None for c in convs}
    # the BatchNorm that follows each conv inside its conv_bn Sequential
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            mods = list(seq)
            for a, b in zip(mods, mods[1:]):
                if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d):
                    bns[id(a)] = b
    params = tflite_convs(path)
    if len(params) != len(convs):
        raise SystemExit(f"{path}: {len(params)} convs, CardDetector has {len(convs)}")
    with torch.no_grad():
        for conv, (w, b) in zip(convs, params):
            if tuple(conv.weight.shape) != w.shape:
                raise SystemExit(f"shape mismatch {tuple(conv.weight.shape)} vs {w.shape}")
            conv.weight.copy_(torch.from_numpy(w))
            bn = bns[id(conv)]
            if bn is None:
                conv.bias.copy_(torch.from_numpy(b))
            else:
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(b))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
    return model.state_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflite", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    sd = state_from_tflite(a.tflite)
    torch.save(sd, a.out)
    print(json.dumps({"out": a.out, "tensors": len(sd)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
