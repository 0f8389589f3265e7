"""The bundle format: everything a device needs to identify cards, signed by the fleet key.

A bundle is a directory::

    manifest.json            BundleManifest (format 1): versions, thresholds, model specs, sha256+size per file
    manifest.sig             ed25519 signature of the exact bytes of manifest.json, base64
    detector.tflite          corner detector
    embedder.tflite          card embedder
    catalog/embeddings.npy   (n_cards, embedding_dim) int8 or float16 matrix
    catalog/ids.json         list of n_cards card ids, row order of the matrix
    golden/expected.json     {"<image file relative to golden/>": "<card_id>"} for the self-test
    golden/*.jpg|png         a few real captures

Only the manifest is signed; every other file is bound to it by sha256 and size, so one signature check
plus one hash pass proves the whole directory. ``verify_bundle`` is what a device runs before it trusts a
bundle (after download, and at start-up); ``write_bundle`` is what the model pipeline calls to make one.

On the wire a bundle travels as an uncompressed, deterministic tar (``pack_bundle``/``unpack_bundle``):
TFLite files and int8 matrices barely compress, and an uncompressed tar can be resumed with HTTP Range.

This module is device code: stdlib, pydantic, numpy and ``cryptography`` only (cv2 only inside
``structural_self_test``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
#: Files every bundle must carry (golden images are listed in golden/expected.json).
REQUIRED_FILES = ("detector.tflite", "embedder.tflite", "catalog/embeddings.npy", "catalog/ids.json",
                  "golden/expected.json")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle cannot be trusted or used. ``reason`` is a short machine-readable code, ``path`` the file."""

    REASONS = ("missing_file", "wrong_hash", "wrong_size", "bad_signature", "unknown_format", "invalid_manifest",
               "unexpected_file", "unsafe_path", "bad_archive", "bad_content")

    def __init__(self, reason: str, message: str, path: str | None = None):
        assert reason in self.REASONS, reason
        self.reason, self.path = reason, path
        super().__init__(f"{reason}: {path + ': ' if path else ''}{message}")


# --------------------------------------------------------------------------------------------- manifest


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(description="Hex sha256 of the file's bytes.", pattern=r"^[0-9a-f]{64}$")
    size: int = Field(description="File size in bytes.", ge=0)


class Thresholds(BaseModel):
    """Decision thresholds the device applies to embedding similarities. Model-specific extras are allowed."""

    model_config = ConfigDict(extra="allow")
    accept_score: float = Field(description="Top-1 cosine similarity at or above which a card may be accepted.",
                                ge=-1.0, le=1.0)
    accept_margin: float = Field(description="Minimum top-1 minus top-2 similarity to accept.", ge=0.0, le=2.0)
    no_card_score: float = Field(description="Top-1 similarity below which the frame holds no identifiable card.",
                                 ge=-1.0, le=1.0)
    accept_reprint_margin: float | None = Field(
        None, ge=0.0, le=2.0, description="Minimum margin to accept when the two best are printings of one reprint "
                                          "contest decided by difference patches (None: accept_margin).")
    reprint_min_height: float = Field(0.0, ge=0.0, le=10_000.0, description="Card height in the frame (px) below "
                                      "which a reprint contest's verdict is never accepted (its patches are too small).")
    confidence: dict[str, Any] | None = Field(
        None, description="Calibrated confidence model (device.vision.confidence: features, weights, bias, mean, "
                          "scale); None: the device reports no confidence.")
    accept_confidence: float | None = Field(
        None, gt=0.0, le=1.0, description="Confidence at or above which a card is accepted (with confidence_min_score); "
                                          "replaces the score/margin/height thresholds. None: those decide.")
    accept_flags: list[str] = Field(
        default_factory=list, description="Soft quality-gate failures (glare, too_blurry, partially_out_of_view) "
                                          "that the confidence rule may still accept: its calibration held such cards. "
                                          "Others are never accepted.")
    confidence_min_score: float = Field(
        0.0, ge=-1.0, le=1.0, description="Top-1 similarity a card needs besides accept_confidence: what keeps out "
                                          "non-catalog objects that match one catalog card much better than any other.")

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.no_card_score > self.accept_score:
            raise ValueError(f"no_card_score {self.no_card_score} is above accept_score {self.accept_score}")
        if self.accept_confidence is not None and self.confidence is None:
            raise ValueError("accept_confidence without a confidence model")
        from device.vision.detector import SOFT_REASONS

        unknown = sorted(set(self.accept_flags) - set(SOFT_REASONS))
        if unknown:
            raise ValueError(f"accept_flags: {', '.join(unknown)} not soft gate failures ({', '.join(SOFT_REASONS)})")
        if self.confidence is not None:
            from device.vision.confidence import ConfidenceModel

            ConfidenceModel.from_manifest({"thresholds": {"confidence": self.confidence}})  # raises on a broken one
        return self


class EmbedderSpec(BaseModel):
    """How to feed the embedder and read its output. Model-specific extras (dtype, mean/std…) are allowed."""

    model_config = ConfigDict(extra="allow")
    input_size: int | tuple[int, int] = Field(description="Square side or (height, width) of the input crop in pixels.")
    embedding_dim: int = Field(description="Length of one embedding (columns of catalog/embeddings.npy).", ge=1)
    normalization: str | dict[str, Any] = Field(
        description="Input pixel normalisation: a name ('imagenet', 'clip', 'unit', 'none') or {mean, std}.")


class DetectorSpec(BaseModel):
    """How to feed the detector. Model-specific extras (outputs, score threshold…) are allowed."""

    model_config = ConfigDict(extra="allow")
    input_size: int | tuple[int, int] = Field(description="Square side or (height, width) of the detector input.")
    closer: int = Field(0, ge=0, le=9, description="How many of a frame's biggest detections may get a closer look "
                        "(a second, zoomed inference on each that the input saw small; its pieces replace it: "
                        "overlapping cards seen as one come apart). 0: one pass (bundles before demo-10).")
    closer_min_zoom: float = Field(1.0, ge=0.5, description="A detection gets its closer look only when the zoomed "
                                   "pass sees it at least this many times larger than the first pass did (a card "
                                   "that already fills the frame gains nothing from it).")


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1] = Field(FORMAT, description="Bundle format version; devices refuse formats they do not know.")
    version: str = Field(description="Bundle version (what DeviceStatus.bundle_version and scans carry).",
                         pattern=VERSION_RE.pattern)
    created: datetime = Field(description="When the bundle was built (UTC).")
    catalog_version: str = Field(description="Catalog version the embeddings were built from.", max_length=64)
    catalog_source: str = Field(description="Catalog source, e.g. 'pokemon-tcg-data'.", max_length=64)
    thresholds: Thresholds = Field(description="Decision thresholds.")
    embedder: EmbedderSpec = Field(description="Embedder input/output specification.")
    detector: DetectorSpec = Field(description="Detector input specification.")
    files: dict[str, FileEntry] = Field(description="Every payload file: relative POSIX path → sha256 and size.")

    @model_validator(mode="after")
    def _files_ok(self) -> "BundleManifest":
        for rel in self.files:
            _check_rel(rel)
        missing = [f for f in REQUIRED_FILES if f not in self.files]
        if missing:
            raise ValueError(f"files lacks required {', '.join(missing)}")
        return self


# --------------------------------------------------------------------------------------------- keys


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(source: str | Path | bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM file path, PEM bytes, or a key object."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an ed25519 private key")
    return key


def load_public_key(source: str | Path | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An ed25519 public key from a PEM file path, PEM bytes, raw 32 bytes, or a key object."""
    if isinstance(source, Ed25519PublicKey):
        return source
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an ed25519 public key")
    return key


# --------------------------------------------------------------------------------------------- helpers


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    if (not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or str(p) != rel
            or rel in (MANIFEST, SIGNATURE) or rel.startswith(".")):
        raise BundleError("unsafe_path", "must be a plain relative POSIX path inside the bundle", rel)
    return rel


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (the directory entry itself is fsync'd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (so a power cut after this cannot lose content)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def manifest_bytes(manifest: BundleManifest) -> bytes:
    """Canonical serialisation (sorted keys): the bytes that get signed."""
    data = manifest.model_dump(mode="json")
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------------------------- write / sign


def write_bundle(out_dir: str | Path, files: dict[str, Path | bytes], manifest_fields: dict[str, Any],
                 signing_key: Ed25519PrivateKey | str | Path | bytes | None = None) -> BundleManifest:
    """Write a bundle directory and return its manifest.

    ``files`` maps relative POSIX paths (see REQUIRED_FILES, plus golden images) to source paths or bytes.
    ``manifest_fields`` gives version, catalog_version, catalog_source, thresholds, embedder, detector and
    optionally created; ``format`` and ``files`` are filled in here. With ``signing_key`` the bundle is signed
    too (otherwise call ``sign_bundle`` later, e.g. on the release machine that holds the fleet key).
    The contents are checked for consistency (ids vs embeddings rows/columns, golden images listed).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    for key in ("format", "files"):
        if key in manifest_fields:
            raise ValueError(f"manifest_fields must not set {key!r}; write_bundle fills it in")
    for rel in files:
        _check_rel(rel)
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise BundleError("missing_file", f"write_bundle needs {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, FileEntry] = {}
    for rel, src in sorted(files.items()):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, (bytes, bytearray, memoryview)):
            dest.write_bytes(bytes(src))
        else:
            shutil.copyfile(src, dest)
        entries[rel] = FileEntry(sha256=sha256_file(dest), size=dest.stat().st_size)
    fields = {"created": datetime.now(timezone.utc), **manifest_fields, "format": FORMAT, "files": entries}
    try:
        manifest = BundleManifest.model_validate(fields)
    except ValidationError as exc:
        shutil.rmtree(out, ignore_errors=True)
        err = exc.errors()[0]
        raise BundleError("invalid_manifest", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    try:
        check_contents(out, manifest)
    except BundleError:
        shutil.rmtree(out, ignore_errors=True)
        raise
    (out / MANIFEST).write_bytes(manifest_bytes(manifest))
    if signing_key is not None:
        sign_bundle(out, signing_key)
    return manifest


def sign_bundle(bundle_dir: str | Path, private_key: Ed25519PrivateKey | str | Path | bytes) -> str:
    """Sign manifest.json (its exact bytes) and write manifest.sig; returns the base64 signature."""
    d = Path(bundle_dir)
    key = load_private_key(private_key)
    sig = base64.b64encode(key.sign((d / MANIFEST).read_bytes())).decode("ascii")
    tmp = d / (SIGNATURE + ".tmp")
    tmp.write_text(sig + "\n")
    os.replace(tmp, d / SIGNATURE)
    return sig


def read_signature(bundle_dir: str | Path) -> str:
    p = Path(bundle_dir) / SIGNATURE
    if not p.is_file():
        raise BundleError("missing_file", "bundle is not signed", SIGNATURE)
    return p.read_text().strip()


# --------------------------------------------------------------------------------------------- verify


def parse_manifest(data: bytes) -> BundleManifest:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError("invalid_manifest", f"not JSON: {exc}", MANIFEST) from exc
    if not isinstance(raw, dict):
        raise BundleError("invalid_manifest", "must be a JSON object", MANIFEST)
    if raw.get("format") != FORMAT:
        raise BundleError("unknown_format", f"format {raw.get('format')!r}, this device reads {FORMAT}", MANIFEST)
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BundleError("invalid_manifest", f"{'.'.join(map(str, err['loc']))}: {err['msg']}", MANIFEST) from exc


def verify_bundle(bundle_dir: str | Path, public_key: Ed25519PublicKey | str | Path | bytes,
                  *, check_hashes: bool = True) -> BundleManifest:
    """Prove a bundle directory is exactly what the fleet key signed; return its manifest.

    Order: signature over manifest.json bytes → format → manifest schema → every listed file present,
    a regular file (no symlinks), right size, right sha256 → no unlisted files. Raises ``BundleError``.
    """
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError("missing_file", "bundle directory not found", str(d))
    key = load_public_key(public_key)
    mpath = d / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise BundleError("missing_file", "no manifest", MANIFEST)
    data = mpath.read_bytes()
    sig_text = read_signature(d)
    try:
        key.verify(base64.b64decode(sig_text, validate=True), data)
    except (InvalidSignature, ValueError) as exc:
        raise BundleError("bad_signature", "manifest signature does not verify with the fleet key", SIGNATURE) from exc
    manifest = parse_manifest(data)
    for rel, entry in manifest.files.items():
        p = d / rel
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise BundleError("unsafe_path", "not a regular file", rel)
        if not p.is_file():
            raise BundleError("missing_file", "listed in the manifest but absent", rel)
        size = p.stat().st_size
        if size != entry.size:
            raise BundleError("wrong_size", f"{size} bytes, manifest says {entry.size}", rel)
        if check_hashes:
            digest = sha256_file(p)
            if digest != entry.sha256:
                raise BundleError("wrong_hash", f"sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}…", rel)
    listed = set(manifest.files) | {MANIFEST, SIGNATURE}
    for p in d.rglob("*"):
        rel = p.relative_to(d).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        if rel not in listed:
            raise BundleError("unexpected_file", "not listed in the manifest", rel)
    return manifest


def check_contents(bundle_dir: str | Path, manifest: BundleManifest) -> None:
    """Consistency of the payload (not integrity): ids vs embedding matrix, golden files listed and present."""
    import numpy as np

    d = Path(bundle_dir)
    try:
        ids = json.loads((d / "catalog/ids.json").read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError("bad_content", f"unreadable: {exc}", "catalog/ids.json") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BundleError("bad_content", "must be a JSON list of card ids", "catalog/ids.json")
    try:
        emb = np.load(d / "catalog/embeddings.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError("bad_content", f"not a .npy matrix: {exc}", "catalog/embeddings.npy") from exc
    if emb.ndim != 2 or emb.dtype not in (np.int8, np.float16, np.float32):
        raise BundleError("bad_content", f"need a 2-D int8/float16 matrix, got {emb.dtype} {emb.shape}",
                          "catalog/embeddings.npy")
    if emb.shape[0] != len(ids):
        raise BundleError("bad_content", f"{emb.shape[0]} rows but {len(ids)} ids", "catalog/embeddings.npy")
    if emb.shape[1] != manifest.embedder.embedding_dim:
        raise BundleError("bad_content", f"{emb.shape[1]} columns but embedder.embedding_dim is "
                          f"{manifest.embedder.embedding_dim}", "catalog/embeddings.npy")
    golden = golden_expected(d)
    for name in golden:
        rel = f"golden/{name}"
        if rel not in manifest.files:
            raise BundleError("bad_content", f"golden image {rel} is not in the bundle", "golden/expected.json")


def golden_expected(bundle_dir: str | Path) -> dict[str, str]:
    """golden/expected.json: image name (relative to golden/) → card id."""
    p = Path(bundle_dir) / "golden/expected.json"
    try:
        data = json.loads(p.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError("bad_content", f"unreadable: {exc}", "golden/expected.json") from exc
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in data.items()):
        raise BundleError("bad_content", "must map image name → card id (non-empty)", "golden/expected.json")
    for name in data:
        _check_rel(f"golden/{name}")
    return data


def structural_self_test(bundle_dir: str | Path) -> tuple[bool, str]:
    """A self-test without the models: manifest thresholds sane, ids/embeddings consistent, every golden
    image decodes (cv2) and its expected card id is in the catalog. The vision pipeline's real self-test
    additionally runs the golden images through detector and embedder."""
    try:
        d = Path(bundle_dir)
        manifest = parse_manifest((d / MANIFEST).read_bytes())
        check_contents(d, manifest)
        import cv2
        import numpy as np

        ids = set(json.loads((d / "catalog/ids.json").read_bytes()))
        for name, card_id in golden_expected(d).items():
            img = cv2.imdecode(np.fromfile(d / "golden" / name, dtype=np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                return False, f"golden/{name}: does not decode as an image"
            if card_id not in ids:
                return False, f"golden/{name}: expected card {card_id} is not in catalog/ids.json"
        return True, f"{len(ids)} catalog cards, golden images decode"
    except BundleError as exc:
        return False, str(exc)
    except Exception as exc:  # a self-test never raises: any surprise is a failed test
        return False, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------- archive


def pack_bundle(bundle_dir: str | Path, out_tar: str | Path) -> str:
    """Deterministic uncompressed tar of a bundle (sorted, mtime 0, root-owned); returns its sha256."""
    d = Path(bundle_dir)
    names = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    tmp = Path(str(out_tar) + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in names:
            info = tarfile.TarInfo(rel)
            info.size = (d / rel).stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            with open(d / rel, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out_tar)
    return sha256_file(out_tar)


def unpack_bundle(archive: str | Path, dest: str | Path, *, max_bytes: int = 4 << 30) -> None:
    """Extract a bundle tar into ``dest`` (created), accepting only regular files at safe relative paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    total = 0
    try:
        with tarfile.open(archive, "r:") as tar:
            for m in tar:
                if m.isdir():
                    continue
                if not m.isfile():
                    raise BundleError("bad_archive", "only regular files allowed", m.name)
                if m.name not in (MANIFEST, SIGNATURE):
                    _check_rel(m.name)
                total += m.size
                if total > max_bytes:
                    raise BundleError("bad_archive", f"archive expands beyond {max_bytes} bytes")
                target = dest / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError("bad_archive", f"cannot read archive: {exc}") from exc


def describe(manifest: BundleManifest) -> dict[str, Any]:
    """A short summary for logs and APIs."""
    return {"version": manifest.version, "catalog_version": manifest.catalog_version,
            "created": manifest.created.isoformat(), "files": len(manifest.files),
            "bytes": sum(f.size for f in manifest.files.values())}


__all__ = [
    "BundleError", "BundleManifest", "FileEntry", "Thresholds", "EmbedderSpec", "DetectorSpec",
    "write_bundle", "sign_bundle", "verify_bundle", "load_public_key", "load_private_key",
    "generate_private_key", "private_key_pem", "public_key_pem", "pack_bundle", "unpack_bundle",
    "structural_self_test", "check_contents", "golden_expected", "sha256_file", "read_signature",
    "fsync_tree", "parse_manifest", "manifest_bytes", "describe", "REQUIRED_FILES", "FORMAT",
]
