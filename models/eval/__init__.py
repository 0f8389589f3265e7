"""Evaluation harness: identifiers (hash baseline, subprocess, HTTP) and the report writer."""

from models.eval.identifiers import (HashIdentifier, HttpIdentifier, IdentifiedCard, Identifier, SubprocessIdentifier,
                                     detect_quads, make_identifier)
from models.eval.report import write_report

__all__ = ["HashIdentifier", "HttpIdentifier", "IdentifiedCard", "Identifier", "SubprocessIdentifier", "detect_quads",
           "make_identifier", "write_report"]
