"""Build a cache folder (FAISS index, catalog keypoints) beside its final place and move it there whole.

Several processes may build the same folder at once — the ingest and resolver workers starting together, two
evaluations on one machine — so each builds in a staging folder of its own (a shared ``name.tmp`` let one
builder delete the other's half-written files: ``make eval-final`` died on a vanished ``count.npy`` while a
second evaluation built the same keypoints). The first finished build takes the place; a later one that finds
it already published by another process discards its own copy (both were built from the same inputs).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def staging_folder(folder: Path) -> Path:
    """A new, empty folder beside ``folder`` that only this caller writes into."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))


def publish(staged: Path, folder: Path, replace: bool = True) -> bool:
    """Move the finished ``staged`` folder to ``folder``; readers never see a half-written one. ``replace``: an
    existing ``folder`` (a stale build) is moved aside first and deleted. Returns False when another process
    published ``folder`` between the two renames (``staged`` is then deleted: that build is as good)."""
    old = None
    if replace and folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{folder.name}.old-", dir=folder.parent))
        try:
            folder.rename(old / folder.name)
        except FileNotFoundError:
            pass  # another process moved it first
    try:
        staged.rename(folder)
        ok = True
    except OSError:  # the folder exists again: another build was published meanwhile
        shutil.rmtree(staged, ignore_errors=True)
        ok = False
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return ok
