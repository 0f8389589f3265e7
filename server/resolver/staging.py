"""Build a cache folder (FAISS index, catalog keypoints) beside its final place and move it there whole.

Several processes may build the same folder at once — the ingest and resolver workers starting together, two
evaluations on one machine — so each builds in a staging folder of its own (a shared ``name.tmp`` let one
builder delete the other's half-written files: ``make eval-final`` died on a vanished ``count.npy`` while a
second evaluation built the same keypoints). The first finished build takes the place and stays: a later one
finds the folder there and discards its own copy (both were built from the same inputs), so no process ever
moves a folder another may be reading. A folder found unusable (corrupt, half-written by an older version) is
``discard``-ed before the build that replaces it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def staging_folder(folder: Path) -> Path:
    """A new, empty folder beside ``folder`` that only this caller writes into."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))


def discard(folder: Path) -> None:
    """Remove an unusable ``folder`` so that a new build can take its place; moved aside first, so no reader
    sees it half-deleted."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f"{folder.name}.old-", dir=folder.parent))
    try:
        folder.rename(trash / folder.name)
    except FileNotFoundError:
        pass  # another process discarded it first
    shutil.rmtree(trash, ignore_errors=True)


def publish(staged: Path, folder: Path) -> bool:
    """Move the finished ``staged`` folder to ``folder`` (readers never see a half-written one). False when
    another process published ``folder`` first: ``staged`` is deleted and theirs stays."""
    try:
        staged.rename(folder)
        return True
    except OSError:  # the folder is there (not empty): another build won
        shutil.rmtree(staged, ignore_errors=True)
        return False
