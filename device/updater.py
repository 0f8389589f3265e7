"""Over-the-air bundle updates on the device: download, verify, stage, self-test, atomic swap, rollback.

Layout under the bundle root (``bundles.root`` in device.yaml, default /var/lib/scanemon)::

    current  -> bundles/<version>        symlink: what the pipeline loads
    previous -> bundles/<version>        symlink: the last good bundle, for rollback
    bundles/<version>/                   complete, verified bundles (at most current + previous)
    bundles/<version>.staging/           being unpacked/verified (removed by recover() after a crash)
    downloads/<version>.tar.part         partial download (resumed with HTTP Range)
    update-state.json                    the last attempt: version, ok, reason (for support / status)

Invariant: ``current`` only ever points at a directory that was fully written, fsync'd, verified and
self-tested, and it is replaced with one ``rename(2)`` of a temporary symlink (atomic on POSIX), followed
by an fsync of the root directory. A power cut at any point leaves either the old or the new bundle as
``current``; ``recover()`` (run at start-up) removes staging leftovers and, should ``current`` somehow be
unusable, falls back to ``previous`` or any other bundle that verifies.

The self-test is a callable ``self_test(bundle_dir) -> (ok, reason)`` injected by the caller, so this module
does not depend on the vision code. For fault-injection tests, ``SCANEMON_UPDATER_HOOK=<step>`` makes the
updater write ``$SCANEMON_UPDATER_HOOK_FILE`` and block at that step (the test then kills it with -9).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import queue
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from device.bundle import (
    BundleError,
    fsync_dir,
    fsync_tree,
    load_public_key,
    read_signature,
    structural_self_test,
    unpack_bundle,
    verify_bundle,
)
from device.protocol import BundleAnnouncement, DeviceState, DeviceStatus

log = logging.getLogger(__name__)

SelfTest = Callable[[Path], tuple[bool, str]]
#: Fault-injection points, in the order the updater passes them.
STEPS = ("downloaded", "unpacked", "verified", "self_tested", "renamed", "tmp_link", "swapped",
         "previous_linked", "pruned")
HOOK_ENV, HOOK_FILE_ENV = "SCANEMON_UPDATER_HOOK", "SCANEMON_UPDATER_HOOK_FILE"


class UpdateError(Exception):
    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"{stage}: {message}")


@dataclass
class UpdateResult:
    ok: bool
    version: str | None  # the bundle being served after the attempt
    attempted: str
    reason: str = ""
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def _hook(step: str) -> None:
    if os.environ.get(HOOK_ENV) == step:
        marker = os.environ.get(HOOK_FILE_ENV)
        if marker:
            Path(marker).write_text(step)
        while True:  # block until killed: the "power cut" happens here
            time.sleep(3600)


# --------------------------------------------------------------------------------------------- download


class HttpFetcher:
    """Authenticated download with resume (HTTP Range) into ``<dest>.part``; stdlib only."""

    def __init__(self, base_url: str = "", token: str = "", timeout: float = 30.0, max_bytes: int = 4 << 30,
                 progress: Callable[[int], None] | None = None):
        self.base_url, self.token, self.timeout, self.max_bytes = base_url, token, timeout, max_bytes
        self.progress = progress  # called per chunk with bytes so far (the updater pings its watchdog)

    def fetch(self, url: str, part: Path) -> Path:
        url = urllib.parse.urljoin(self.base_url.rstrip("/") + "/", url) if self.base_url else url
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # our partial file is already complete (or garbage): start over
                part.unlink()
                return self.fetch(url, part)
            raise UpdateError("download", f"HTTP {exc.code} {exc.reason} for {url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise UpdateError("download", f"{url}: {exc}") from exc
        with resp:
            mode = "ab" if resp.status == 206 else "wb"
            if resp.status != 206:
                have = 0
            length = resp.headers.get("Content-Length")
            expected = have + int(length) if length is not None else None
            if expected is not None and expected > self.max_bytes:
                raise UpdateError("download", f"archive of {expected} bytes exceeds {self.max_bytes}")
            got = have
            try:
                with open(part, mode) as f:
                    while chunk := resp.read(1 << 20):
                        f.write(chunk)
                        got += len(chunk)
                        if self.progress:
                            self.progress(got)
                    f.flush()
                    os.fsync(f.fileno())
            except Exception as exc:  # OSError, http.client.IncompleteRead (an HTTPException), timeouts
                raise UpdateError("download", f"interrupted after {got} bytes: {type(exc).__name__}: {exc}") from exc
            if expected is not None and got != expected:
                raise UpdateError("download", f"truncated: got {got} of {expected} bytes")
        return part


# --------------------------------------------------------------------------------------------- updater


class Updater:
    def __init__(self, root: str | Path, public_key, self_test: SelfTest | None = None,
                 fetcher: HttpFetcher | None = None,
                 report: Callable[[UpdateResult], None] | None = None):
        self.root = Path(root)
        self.bundles = self.root / "bundles"
        self.downloads = self.root / "downloads"
        self.public_key = load_public_key(public_key)
        self.self_test = self_test or structural_self_test
        self.fetcher = fetcher or HttpFetcher()
        self.report = report
        self.bundles.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)

    # ---- state

    def _link_target(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return (self.root / os.readlink(link)).resolve() if not os.path.isabs(os.readlink(link)) \
            else Path(os.readlink(link))

    def current_dir(self) -> Path | None:
        t = self._link_target("current")
        return t if t is not None and t.is_dir() else None

    def current_version(self) -> str | None:
        d = self.current_dir()
        return d.name if d else None

    def _valid(self, d: Path | None, check_hashes: bool = True) -> bool:
        if d is None or not d.is_dir() or d.name.endswith(".staging"):
            return False
        try:
            return verify_bundle(d, self.public_key, check_hashes=check_hashes).version == d.name
        except BundleError as exc:
            log.warning("bundle %s is not valid: %s", d, exc)
            return False

    def _set_link(self, name: str, target_dir: Path) -> None:
        """Atomically point ``root/name`` at ``target_dir`` (relative link), then fsync the root."""
        tmp = self.root / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.path.relpath(target_dir, self.root), tmp)
        if name == "current":
            _hook("tmp_link")
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def _write_state(self, result: UpdateResult) -> None:
        tmp = self.root / ".update-state.json.tmp"
        tmp.write_text(json.dumps(asdict(result), indent=2) + "\n")
        os.replace(tmp, self.root / "update-state.json")

    # ---- start-up

    def recover(self, check_hashes: bool = True) -> str | None:
        """After a crash or power cut: drop staging leftovers, make sure ``current`` is a valid bundle.
        Returns the version being served (None when there is no valid bundle at all)."""
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.bundles.iterdir():
            if p.name.endswith(".staging") or p.name.startswith("."):
                log.info("recover: removing stale %s", p)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        cur = self.current_dir()
        if self._valid(cur, check_hashes):
            return cur.name
        candidates = [self._link_target("previous")]
        candidates += sorted((p for p in self.bundles.iterdir() if p.is_dir()),
                             key=lambda p: p.stat().st_mtime, reverse=True)
        for cand in candidates:
            if cand is not None and cand != cur and self._valid(cand, check_hashes):
                log.warning("recover: current (%s) unusable, falling back to %s", cur, cand.name)
                self._set_link("current", cand)
                return cand.name
        if (self.root / "current").is_symlink():
            (self.root / "current").unlink()
        return None

    # ---- update

    def apply(self, ann: BundleAnnouncement) -> UpdateResult:
        """Bring the device to the announced bundle, or keep the current one and say why."""
        if ann.version == self.current_version():
            return UpdateResult(True, ann.version, ann.version, "already current")
        part = self.downloads / f"{ann.version}.tar.part"
        try:
            if not part.exists() or _sha256(part) != ann.sha256:
                self.fetcher.fetch(ann.url, part)
            digest = _sha256(part)
            if digest != ann.sha256:
                part.unlink(missing_ok=True)  # a wrong complete file: never resume from it
                raise UpdateError("download", f"archive sha256 {digest[:12]}… does not match the announced "
                                  f"{ann.sha256[:12]}… (truncated or tampered)")
            _hook("downloaded")
            result = self.install_archive(part, ann.version, expected_signature=ann.signature)
        except UpdateError as exc:
            result = UpdateResult(False, self.current_version(), ann.version, str(exc))
        if result.ok:
            part.unlink(missing_ok=True)
        self._finish(result)
        return result

    def install_archive(self, archive: Path, version: str, expected_signature: str | None = None) -> UpdateResult:
        """Unpack, verify, self-test and swap in a downloaded archive. Raises nothing; returns the outcome."""
        staging = self.bundles / f"{version}.staging"
        final = self.bundles / version
        try:
            if staging.exists():
                shutil.rmtree(staging)
            try:
                unpack_bundle(archive, staging)
                _hook("unpacked")
                manifest = verify_bundle(staging, self.public_key)
            except BundleError as exc:
                raise UpdateError("verify", str(exc)) from exc
            if manifest.version != version:
                raise UpdateError("verify", f"archive holds bundle {manifest.version}, announced {version}")
            if expected_signature and read_signature(staging) != expected_signature.strip():
                raise UpdateError("verify", "manifest signature differs from the announced one")
            fsync_tree(staging)
            _hook("verified")
            try:
                ok, why = self.self_test(staging)
            except Exception as exc:  # an exploding self-test is a failing self-test
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                raise UpdateError("self_test", why)
            _hook("self_tested")
            old = self.current_dir()
            if final.exists():
                if final == old:
                    shutil.rmtree(staging)
                    return UpdateResult(True, version, version, "already current")
                shutil.rmtree(final)  # a leftover from an interrupted earlier attempt; staging is verified
            os.rename(staging, final)
            fsync_dir(self.bundles)
            _hook("renamed")
            self._set_link("current", final)
            _hook("swapped")
            if old is not None and old != final:
                self._set_link("previous", old)
            _hook("previous_linked")
            self.prune()
            _hook("pruned")
            return UpdateResult(True, version, version, f"installed (self-test: {why})")
        except UpdateError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            return UpdateResult(False, self.current_version(), version, str(exc))
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            return UpdateResult(False, self.current_version(), version, f"io: {exc}")

    def rollback(self) -> UpdateResult:
        """Swap back to ``previous`` (e.g. when the new bundle misbehaves in production)."""
        prev, cur = self._link_target("previous"), self.current_dir()
        if not self._valid(prev):
            return UpdateResult(False, self.current_version(), "", "no valid previous bundle")
        self._set_link("current", prev)
        if cur is not None:
            self._set_link("previous", cur)
        result = UpdateResult(True, prev.name, prev.name, f"rolled back from {cur.name if cur else None}")
        self._finish(result)
        return result

    def prune(self) -> None:
        keep = {p for p in (self.current_dir(), self._link_target("previous")) if p is not None}
        for p in self.bundles.iterdir():
            if p.is_dir() and p.resolve() not in keep and not p.name.endswith(".staging"):
                shutil.rmtree(p, ignore_errors=True)

    def _finish(self, result: UpdateResult) -> None:
        (log.info if result.ok else log.error)("bundle update to %s: %s (serving %s)",
                                               result.attempted, result.reason, result.version)
        self._write_state(result)
        if self.report:
            try:
                self.report(result)
            except Exception:  # reporting must never undo an update
                log.exception("update report failed")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def status_for(device_id: str, result: UpdateResult, software_version: str = "") -> DeviceStatus:
    """The DeviceStatus a device publishes after an attempt (the bundle it serves, whatever happened)."""
    error = None if result.ok else f"{result.attempted}: {result.reason}"[:500]
    return DeviceStatus(device_id=device_id, state=DeviceState.online, bundle_version=result.version or "",
                        software_version=software_version, update_error=error)


def current_version(root: str | Path) -> str | None:
    """The bundle version a device serves (for the relay's DeviceStatus/Telemetry), without verifying."""
    link = Path(root) / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


# --------------------------------------------------------------------------------------------- config + CLI


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="Base URL of the Scanemon server (bundle downloads).")
    token: str = Field("", description="Device-scoped API token (scope 'device').")


class _Bundles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field("/var/lib/scanemon", description="Folder with current, previous, bundles/, downloads/.")
    public_key: str = Field(description="Fleet ed25519 public key (PEM) that bundles must be signed with.")
    self_test: str = Field("device.bundle:structural_self_test",
                           description="module:function of the self-test run before a bundle goes live.")


class UpdaterConfig(BaseModel):
    """updater.yaml. Broker identity and credentials come from the appliance's device.yaml (one source)."""

    model_config = ConfigDict(extra="forbid")
    device_config: str = Field("/etc/scanemon/device.yaml",
                               description="The appliance's device.yaml (device_id and mqtt section).")
    server: _Server = Field(description="Server connection for downloads.")
    bundles: _Bundles = Field(description="Bundle storage and trust.")


def load_config(path: str | Path) -> UpdaterConfig:
    from device.configfile import load_model

    return load_model(UpdaterConfig, path)


def load_self_test(spec: str) -> SelfTest:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def _watch(cfg: UpdaterConfig, updater: Updater) -> int:
    """Follow the retained BundleAnnouncement and apply each new one; publish DeviceStatus after each."""
    import paho.mqtt.client as mqtt

    from device.protocol import ProtocolError, Topics, decode, encode
    from device.sdnotify import notifier

    from device.config import load_config as load_device_config

    dev = load_device_config(cfg.device_config)
    sd = notifier()
    todo: queue.Queue[BundleAnnouncement] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{dev.device_id}-updater",
                         protocol=mqtt.MQTTv5 if dev.mqtt.protocol == "5" else mqtt.MQTTv311)
    if dev.mqtt.username:
        client.username_pw_set(dev.mqtt.username, dev.mqtt.password)
    if dev.mqtt.tls:
        client.tls_set(ca_certs=str(dev.mqtt.ca_certs) if dev.mqtt.ca_certs else None)

    def on_connect(c, _u, _f, rc, _p):
        if not rc.is_failure:
            c.subscribe(Topics.FLEET_BUNDLE, qos=1)

    def on_message(_c, _u, msg):
        try:
            todo.put(decode(BundleAnnouncement, msg.payload))
        except ProtocolError as exc:
            log.error("ignoring bad bundle announcement: %s", exc)

    def report(result: UpdateResult) -> None:
        status = status_for(dev.device_id, result, dev.software_version)
        client.publish(Topics.status(dev.device_id), encode(status), qos=1, retain=True)

    updater.report = report
    updater.fetcher.progress = lambda _n: sd.watchdog()
    client.on_connect, client.on_message = on_connect, on_message
    client.connect_async(dev.mqtt.host, dev.mqtt.port, keepalive=dev.mqtt.keepalive)
    client.loop_start()
    sd.ready(f"serving bundle {updater.current_version()}")
    try:
        while True:
            sd.watchdog()
            try:
                ann = todo.get(timeout=5)
            except queue.Empty:
                continue
            while not todo.empty():  # only the newest announcement matters
                ann = todo.get_nowait()
            attempts = 0
            while True:
                result = updater.apply(ann)
                sd.watchdog(force=True)
                sd.status(f"bundle {result.version}: {result.reason}")
                if result.ok or not result.reason.startswith("download") or attempts >= 5:
                    break
                attempts += 1
                time.sleep(min(60, 2 ** attempts))  # network trouble: retry with backoff (resumes the .part)
    except KeyboardInterrupt:
        return 0
    finally:
        sd.stopping()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.updater", description="Scanemon bundle updater")
    p.add_argument("--config", help="updater.yaml (see provisioning templates)")
    p.add_argument("--root", help="bundle root (overrides the config)")
    p.add_argument("--public-key", help="fleet public key PEM (overrides the config)")
    p.add_argument("--self-test", help="module:function (overrides the config)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("recover", help="clean up after a crash; print the served version")
    ap = sub.add_parser("apply", help="apply one announcement (JSON file) or an archive")
    ap.add_argument("--announcement", help="BundleAnnouncement JSON file")
    ap.add_argument("--archive", help="local archive instead of downloading")
    ap.add_argument("--version", help="bundle version of --archive")
    ap.add_argument("--token", default="", help="bearer token for the download")
    sub.add_parser("rollback", help="swap back to the previous bundle")
    sub.add_parser("watch", help="follow the fleet bundle announcement over MQTT (systemd service)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config) if args.config else None
    root = args.root or (cfg.bundles.root if cfg else None)
    key = args.public_key or (cfg.bundles.public_key if cfg else None)
    if not root or not key:
        p.error("need --root and --public-key, or --config")
    st = load_self_test(args.self_test or (cfg.bundles.self_test if cfg else "device.bundle:structural_self_test"))
    token = getattr(args, "token", "") or (cfg.server.token if cfg else "")
    fetcher = HttpFetcher(cfg.server.url if cfg else "", token)
    up = Updater(root, key, st, fetcher)
    served = up.recover()
    if args.cmd == "recover":
        print(served or "none")
        return 0 if served else 1
    if args.cmd == "rollback":
        r = up.rollback()
        print(json.dumps(asdict(r)))
        return 0 if r.ok else 1
    if args.cmd == "apply":
        if args.announcement:
            from device.protocol import decode

            r = up.apply(decode(BundleAnnouncement, Path(args.announcement).read_bytes()))
        elif args.archive and args.version:
            r = up.install_archive(Path(args.archive), args.version)
            up._finish(r)
        else:
            p.error("apply needs --announcement or --archive with --version")
        print(json.dumps(asdict(r)))
        return 0 if r.ok else 1
    if cfg is None:
        p.error("watch needs --config")
    return _watch(cfg, up)


if __name__ == "__main__":
    sys.exit(main())
