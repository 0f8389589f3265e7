"""Server side of bundles: sign, verify, store as archives, mark current, announce over MQTT.

Storage is plain files under ``<data_dir>/bundles`` (shared between API replicas like any other data):
``<version>.tar`` (the deterministic archive devices download), ``<version>.json`` (BundleInfo) and
``current.json`` (the BundleInfo of the bundle every device should run, replaced atomically). No database
table: the archive has to live on disk anyway and the fleet API only needs the current one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from device.bundle import (
    BundleError,
    VERSION_RE,
    describe,
    load_private_key,
    load_public_key,
    pack_bundle,
    read_signature,
    sign_bundle,
    verify_bundle,
)
from device.protocol import BundleAnnouncement, Topics, encode


class BundleInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(description="Bundle version.")
    catalog_version: str = Field(description="Catalog the embeddings were built from.")
    catalog_source: str = Field(description="Catalog source.")
    created: datetime = Field(description="When the bundle was built.")
    sha256: str = Field(description="sha256 of the archive.")
    size: int = Field(description="Archive size in bytes.")
    signature: str = Field(description="ed25519 signature of manifest.json, base64.")
    files: int = Field(description="Files in the bundle.")
    stored_at: datetime = Field(description="When it was added to this store.")
    thresholds: dict[str, Any] = Field(default_factory=dict, description="Decision thresholds (for display).")


def archive_path_for(version: str) -> str:
    return f"/api/v1/bundles/{version}/archive"


class BundleStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _info_path(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ValueError(f"invalid bundle version {version!r}")
        return self.root / f"{version}.json"

    def archive(self, version: str) -> Path:
        self._info_path(version)
        return self.root / f"{version}.tar"

    def add(self, bundle_dir: str | Path, public_key, *, replace: bool = False) -> BundleInfo:
        """Verify a signed bundle directory and store its archive. Re-adding identical content is a no-op."""
        manifest = verify_bundle(bundle_dir, public_key)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tar.tmp")
        os.close(fd)
        try:
            sha = pack_bundle(bundle_dir, tmp)
            existing = self.get(manifest.version)
            if existing and existing.sha256 != sha and not replace:
                raise BundleError("invalid_manifest", f"version {manifest.version} is already stored with other "
                                  "content; bump the version (devices key on it)")
            os.replace(tmp, self.archive(manifest.version))
        finally:
            Path(tmp).unlink(missing_ok=True)
        info = BundleInfo(version=manifest.version, catalog_version=manifest.catalog_version,
                          catalog_source=manifest.catalog_source, created=manifest.created, sha256=sha,
                          size=self.archive(manifest.version).stat().st_size,
                          signature=read_signature(bundle_dir), files=describe(manifest)["files"],
                          stored_at=datetime.now(timezone.utc),
                          thresholds=manifest.thresholds.model_dump(mode="json"))
        _write_json(self._info_path(manifest.version), info.model_dump(mode="json"))
        return info

    def get(self, version: str) -> BundleInfo | None:
        p = self._info_path(version)
        return BundleInfo.model_validate_json(p.read_bytes()) if p.is_file() else None

    def list(self) -> list[BundleInfo]:
        if not self.root.is_dir():
            return []
        out = [BundleInfo.model_validate_json(p.read_bytes()) for p in self.root.glob("*.json")
               if p.name != "current.json"]
        return sorted(out, key=lambda i: i.created)

    def set_current(self, version: str) -> BundleInfo:
        info = self.get(version)
        if info is None or not self.archive(version).is_file():
            raise KeyError(f"bundle {version} is not in the store {self.root}")
        _write_json(self.root / "current.json", info.model_dump(mode="json"))
        return info

    def current(self) -> BundleInfo | None:
        p = self.root / "current.json"
        return BundleInfo.model_validate_json(p.read_bytes()) if p.is_file() else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def build(src_dir: str | Path, store: BundleStore, signing_key, *, resign: bool = False) -> BundleInfo:
    """Sign (when unsigned, or ``resign``) a bundle directory written by ``device.bundle.write_bundle``,
    verify it with the matching public key and store its archive."""
    key = load_private_key(signing_key)
    src = Path(src_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(src, work)  # never modify the input folder
        if resign or not (work / "manifest.sig").exists():
            sign_bundle(work, key)
        return store.add(work, key.public_key())


def announcement(info: BundleInfo, base_url: str = "") -> BundleAnnouncement:
    url = archive_path_for(info.version)
    return BundleAnnouncement(version=info.version, catalog_version=info.catalog_version,
                              url=base_url.rstrip("/") + url if base_url else url, sha256=info.sha256,
                              signature=info.signature, created=info.created)


def publish(ann: BundleAnnouncement, host: str, port: int, username: str | None = None,
            password: str | None = None, *, tls_ca: str | None = None, timeout: float = 10.0) -> None:
    """Publish the announcement retained at QoS 1 and wait for the broker's PUBACK."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scanemon-bundle-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    if tls_ca:
        client.tls_set(ca_certs=tls_ca)
    rc = client.connect(host, port, keepalive=30)
    if rc != 0:
        raise ConnectionError(f"cannot connect to {host}:{port}: rc={rc}")
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                raise ConnectionError(f"broker {host}:{port} did not accept the connection")
            time.sleep(0.02)
        info = client.publish(Topics.FLEET_BUNDLE, encode(ann), qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError("announcement not acknowledged by the broker")
        if info.rc != 0:
            raise ConnectionError(f"publish failed rc={info.rc}")
    finally:
        client.disconnect()
        client.loop_stop()


__all__ = ["BundleInfo", "BundleStore", "build", "announcement", "publish", "archive_path_for", "load_public_key"]
