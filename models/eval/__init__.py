"""Evaluation harness: identifiers (hash baseline, subprocess, HTTP) and the report writer."""

import os
from pathlib import Path

from models.eval.identifiers import (HashIdentifier, HttpIdentifier, IdentifiedCard, Identifier, SubprocessIdentifier,
                                     detect_quads, make_identifier)
from models.eval.report import write_report

__all__ = ["HashIdentifier", "HttpIdentifier", "IdentifiedCard", "Identifier", "SubprocessIdentifier", "detect_quads",
           "make_identifier", "shared_data", "write_report"]


def shared_data() -> Path:
    """The read-only data folder: $SCANEMON_SHARED_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("SCANEMON_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
