"""OTA on the device: real HTTP downloads from the server app, verification, self-test, atomic swap,
rollback, and power cuts (kill -9 of an updater subprocess at every step of the swap)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device.bundle import generate_private_key, private_key_pem, public_key_pem, verify_bundle, write_bundle
from device.protocol import BundleAnnouncement, DeviceStatus, Topics, decode, encode
from device.updater import STEPS, HttpFetcher, Updater, status_for
from tests.services import free_port, wait_port
from tests.test_bundle import bundle_files, manifest_fields

REPO = Path(__file__).resolve().parents[1]


class Server:
    """The real FastAPI app under uvicorn on a random port, with a bundle store and a device token."""

    def __init__(self, tmp: Path, key):
        import uvicorn

        from server.app import create_app
        from server.auth import issue_token
        from server.bundles import BundleStore
        from server.config import ServerSettings
        from server.db.migrate import upgrade
        from server.db.models import User

        url = f"sqlite:///{tmp / 'server.db'}"
        upgrade(url)
        self.port = free_port()
        settings = ServerSettings(database_url=url, data_dir=tmp / "var", readyz_check_broker=False,
                                  port=self.port)
        self.app = create_app(settings)
        with self.app.state.db.session() as s:
            u = User(username="fleet")
            s.add(u)
            s.flush()
            self.token = issue_token(s, u, "device:pi-1", ["device"])
        self.store = BundleStore(tmp / "var" / "bundles")
        self.key = key
        self.tmp = tmp
        self.cache: dict = {}
        self.uv = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        wait_port(self.port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, version: str, *, key=None, seed: int = 0, tamper=None) -> BundleAnnouncement:
        """Build a bundle (optionally signed by another key or tampered after signing) and announce it."""
        from device.bundle import pack_bundle, read_signature
        from server.bundles import BundleInfo, announcement, build

        if key is None and tamper is None and (version, seed) in self.cache:
            return self.cache[(version, seed)]
        src = self.tmp / f"src-{version}-{seed}"
        write_bundle(src, bundle_files(seed), manifest_fields(version), signing_key=key or self.key)
        if key is None and tamper is None:
            info = build(src, self.store, self.key)
        else:  # bypass the store's own verification to serve a bad bundle, as an attacker or a bug would
            if tamper:
                tamper(src)
            self.store.root.mkdir(parents=True, exist_ok=True)
            sha = pack_bundle(src, self.store.archive(version))
            from datetime import datetime, timezone

            info = BundleInfo(version=version, catalog_version="c", catalog_source="s", created=datetime.now(timezone.utc),
                              sha256=sha, size=self.store.archive(version).stat().st_size,
                              signature=read_signature(src), files=0, stored_at=datetime.now(timezone.utc))
            (self.store.root / f"{version}.json").write_text(info.model_dump_json())
        ann = announcement(info, self.base)
        if key is None and tamper is None:
            self.cache[(version, seed)] = ann
        return ann

    def stop(self) -> None:
        self.uv.should_exit = True
        self.thread.join(10)


@pytest.fixture
def key():
    return generate_private_key()


@pytest.fixture
def server(tmp_path, key):
    s = Server(tmp_path, key)
    yield s
    s.stop()


@pytest.fixture
def device_root(tmp_path) -> Path:
    return tmp_path / "device"


def make_updater(root: Path, server: Server, self_test=None, reports=None) -> Updater:
    return Updater(root, server.key.public_key(), self_test, HttpFetcher(server.base, server.token),
                   report=reports.append if reports is not None else None)


def test_update_and_rollback(server, device_root):
    reports = []
    up = make_updater(device_root, server, reports=reports)
    assert up.recover() is None
    r1 = up.apply(server.publish("v1"))
    assert r1.ok, r1.reason
    r2 = up.apply(server.publish("v2", seed=1))
    assert r2.ok, r2.reason
    assert up.current_version() == "v2"
    assert os.readlink(device_root / "previous") == "bundles/v1"
    assert verify_bundle(device_root / "current", server.key.public_key()).version == "v2"
    assert sorted(p.name for p in (device_root / "bundles").iterdir()) == ["v1", "v2"]
    assert list((device_root / "downloads").iterdir()) == []
    # The device reports what it serves.
    status = status_for("pi-1", reports[-1])
    assert isinstance(status, DeviceStatus) and status.bundle_version == "v2"
    assert decode(DeviceStatus, encode(status)).bundle_version == "v2"
    state = json.loads((device_root / "update-state.json").read_text())
    assert state["ok"] and state["version"] == "v2"
    # Same announcement again: nothing to do.
    assert up.apply(server.publish("v2", seed=1)).reason == "already current"
    r3 = up.apply(server.publish("v3", seed=2))
    assert r3.ok and sorted(p.name for p in (device_root / "bundles").iterdir()) == ["v2", "v3"]  # pruned v1
    rb = up.rollback()
    assert rb.ok and up.current_version() == "v2" and os.readlink(device_root / "previous") == "bundles/v3"


def _assert_kept(up: Updater, root: Path, server: Server, version="v1") -> None:
    assert up.current_version() == version
    assert verify_bundle(root / "current", server.key.public_key()).version == version
    assert not list((root / "bundles").glob("*.staging"))


def test_wrong_archive_hash_keeps_old(server, device_root):
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok
    ann = server.publish("v2", seed=1)
    bad = ann.model_copy(update={"sha256": "0" * 64})
    r = up.apply(bad)
    assert not r.ok and r.reason.startswith("download") and "sha256" in r.reason
    _assert_kept(up, device_root, server)
    assert not (device_root / "downloads" / "v2.tar.part").exists()  # never resumed from a bad file


def test_wrong_file_hash_keeps_old(server, device_root):
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok

    def flip(src: Path):
        p = src / "embedder.tflite"
        b = bytearray(p.read_bytes())
        b[100] ^= 0xFF
        p.write_bytes(bytes(b))

    r = up.apply(server.publish("v2", seed=1, tamper=flip))
    assert not r.ok and "wrong_hash" in r.reason and "embedder.tflite" in r.reason
    _assert_kept(up, device_root, server)
    state = json.loads((device_root / "update-state.json").read_text())
    assert not state["ok"] and state["attempted"] == "v2" and state["version"] == "v1" and "wrong_hash" in state["reason"]


def test_bad_signature_keeps_old(server, device_root):
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok
    r = up.apply(server.publish("v2", seed=1, key=generate_private_key()))
    assert not r.ok and "bad_signature" in r.reason
    _assert_kept(up, device_root, server)


def test_failing_self_test_keeps_old(server, device_root):
    from device.bundle import structural_self_test

    calls = []

    def self_test(d: Path):
        calls.append(d)
        ok, why = structural_self_test(d)  # the real checks run…
        assert ok, why
        if "v2" in d.name:
            return False, "golden a.png recognised as sv1-2, expected sv1-1"  # …and the models disagree
        return True, why

    up = make_updater(device_root, server, self_test=self_test)
    assert up.apply(server.publish("v1")).ok
    r = up.apply(server.publish("v2", seed=1))
    assert not r.ok and r.reason.startswith("self_test") and "sv1-2" in r.reason
    assert calls[-1].name == "v2.staging"  # tested before going live
    _assert_kept(up, device_root, server)

    def boom(_d):
        raise RuntimeError("TFLite interpreter crashed")

    up.self_test = boom
    r = up.apply(server.publish("v3", seed=2))
    assert not r.ok and "TFLite interpreter crashed" in r.reason
    _assert_kept(up, device_root, server)


class _Truncating(http.server.BaseHTTPRequestHandler):
    """Serves a file but, while ``cut`` is set, drops the connection halfway through the body."""

    data = b""
    cut = True
    ranges: list = []

    def do_GET(self):  # noqa: N802
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        else:
            self.send_response(200)
        body = self.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
        else:
            self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_truncated_download_keeps_old_then_resumes(server, device_root):
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok
    ann = server.publish("v2", seed=1)
    _Truncating.data = server.store.archive("v2").read_bytes()
    _Truncating.cut, _Truncating.ranges = True, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        ann2 = ann.model_copy(update={"url": f"http://127.0.0.1:{httpd.server_port}/v2.tar"})
        r = up.apply(ann2)
        assert not r.ok and r.reason.startswith("download"), r.reason
        _assert_kept(up, device_root, server)
        part = device_root / "downloads" / "v2.tar.part"
        assert 0 < part.stat().st_size < len(_Truncating.data)
        _Truncating.cut = False
        r = up.apply(ann2)  # resumes with Range from where it stopped
        assert r.ok, r.reason
        assert _Truncating.ranges[-1] == f"bytes={len(_Truncating.data) // 2}-"
        assert up.current_version() == "v2"
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("step", STEPS)
def test_power_cut_at_every_step(server, device_root, tmp_path, step):
    """kill -9 the updater while it blocks at ``step``; after 'reboot' the device serves a valid bundle."""
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok
    ann = server.publish("v2", seed=1)
    ann_file = tmp_path / "ann.json"
    ann_file.write_bytes(encode(ann))
    pub = tmp_path / "fleet.pub"
    pub.write_bytes(public_key_pem(server.key))
    marker = tmp_path / "marker"
    env = {**os.environ, "SCANEMON_UPDATER_HOOK": step, "SCANEMON_UPDATER_HOOK_FILE": str(marker),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "device.updater", "--root", str(device_root), "--public-key",
                             str(pub), "apply", "--announcement", str(ann_file), "--token", server.token],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"updater exited before reaching {step}: {proc.stdout.read().decode()}")
        assert time.monotonic() < deadline, f"updater never reached {step}"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the power cut
    proc.wait(10)

    # "Reboot": a fresh updater runs its start-up recovery.
    up2 = make_updater(device_root, server)
    served = up2.recover()
    assert served in ("v1", "v2")
    expected = "v1" if STEPS.index(step) < STEPS.index("swapped") else "v2"
    assert served == expected, f"killed at {step}: serving {served}"
    assert verify_bundle(device_root / "current", server.key.public_key()).version == served
    assert not list((device_root / "bundles").glob("*.staging"))
    assert not list(device_root.glob(".*.tmp"))
    # And the update then completes normally.
    r = up2.apply(ann)
    assert r.ok and up2.current_version() == "v2", r.reason
    assert verify_bundle(device_root / "current", server.key.public_key()).version == "v2"


def test_recover_falls_back_when_current_is_corrupt(server, device_root):
    up = make_updater(device_root, server)
    assert up.apply(server.publish("v1")).ok
    assert up.apply(server.publish("v2", seed=1)).ok
    # Storage corruption inside the live bundle (not something a swap can cause, but SD cards do).
    (device_root / "bundles" / "v2" / "catalog" / "ids.json").write_text("[]")
    assert make_updater(device_root, server).recover() == "v1"
    assert verify_bundle(device_root / "current", server.key.public_key()).version == "v1"


def test_watch_over_mqtt_reports_status(server, device_root, tmp_path, mosquitto_factory):
    """End to end: retained announcement on a real broker → updater service → new bundle → DeviceStatus."""
    import paho.mqtt.client as mqtt

    from server.bundles import publish

    broker = mosquitto_factory()
    ann = server.publish("v1")
    publish(ann, broker.host, broker.port)
    pub = tmp_path / "fleet.pub"
    pub.write_bytes(public_key_pem(server.key))
    (tmp_path / "device.yaml").write_text(
        f"device_id: pi-1\nmqtt: {{host: 127.0.0.1, port: {broker.port}}}\n")
    (tmp_path / "updater.yaml").write_text(
        f"device_config: {tmp_path / 'device.yaml'}\nserver: {{url: '{server.base}', token: '{server.token}'}}\n"
        f"bundles: {{root: '{device_root}', public_key: '{pub}'}}\n")
    got: list[DeviceStatus] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
    sub.on_message = lambda _c, _u, m: got.append(decode(DeviceStatus, m.payload))
    sub.connect(broker.host, broker.port)
    sub.subscribe(Topics.status("pi-1"), qos=1)
    sub.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "device.updater", "--config", str(tmp_path / "updater.yaml"),
                             "watch"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not any(s.bundle_version == "v1" for s in got):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no DeviceStatus for v1"
            time.sleep(0.05)
        publish(server.publish("v2", seed=1), broker.host, broker.port)
        while not any(s.bundle_version == "v2" for s in got):
            assert time.monotonic() < deadline + 30, "no DeviceStatus for v2"
            time.sleep(0.05)
        assert os.readlink(device_root / "current") == "bundles/v2"
    finally:
        proc.terminate()
        proc.wait(10)
        sub.loop_stop()


def test_failed_update_is_reported_in_device_status():
    """The device says why an update failed (it keeps serving the old bundle) in its retained status."""
    from device.protocol import decode, encode
    from device.updater import UpdateResult, status_for

    failed = status_for("pi-1", UpdateResult(ok=False, version="1.0", attempted="1.1", reason="bad_signature"))
    back = decode("status", encode(failed))
    assert back.bundle_version == "1.0" and back.update_error == "1.1: bad_signature"
    ok = status_for("pi-1", UpdateResult(ok=True, version="1.1", attempted="1.1"))
    assert ok.update_error is None
