"""Evaluation harness: identifiers (hash baseline, subprocess, HTTP) and the report writer."""

import os
from pathlib import Path

from models.eval.identifiers import (HashIdentifier, HttpIdentifier, IdentifiedCard, Identifier, SubprocessIdentifier,
                                     detect_quads, make_identifier)
from models.eval.report import write_report

__all__ = ["HashIdentifier", "HttpIdentifier", "IdentifiedCard", "Identifier", "SubprocessIdentifier", "detect_quads",
           "frame_size", "make_identifier", "shared_data", "write_report"]


def shared_data() -> Path:
    """The read-only data folder: $SCANEMON_SHARED_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("SCANEMON_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def frame_size(text: str) -> tuple[int, int]:
    """``--frame-size`` of the evaluations: "1280x960" -> (1280, 960). The simulator's blur scales with the
    frame width, so a larger frame is the same scene seen by a sensor with more pixels (the appliance's
    picamera2 default is 1280x960; the evaluations' historical default 640x480)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"frame size {text!r}: expected WxH, e.g. 1280x960") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise ValueError(f"frame size {text!r}: each side must be 64..8192 pixels")
    return w, h
