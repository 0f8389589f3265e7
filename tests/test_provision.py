"""scanemon-provision: init, enrolment (one, and 50 from a CSV into the server database), revocation in the
database, rendered configs and boot files, server units, sd_notify, and the fleet devices API."""

from __future__ import annotations

import csv
import os
import socket
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from provisioning.cli import main as provision


def run(fdir: Path, *args: str) -> int:
    return provision(["--fleet-dir", str(fdir), *args])


@pytest.fixture
def fdir(tmp_path) -> Path:
    d = tmp_path / "fleet"
    assert run(d, "init", "--broker-host", "mqtt.example", "--tls", "--server-url", "https://scan.example") == 0
    return d


def _db_with_owner(url: str):
    from server.db.migrate import upgrade
    from server.db.models import Collection, User
    from server.db.session import Database

    upgrade(url)
    db = Database(url)
    with db.session() as s:
        alice = User(username="alice")
        s.add(alice)
        s.flush()
        s.add_all([Collection(user_id=alice.id, name="Binder"), Collection(user_id=alice.id, name="Bulk")])
    return db


def test_init_layout_and_permissions(fdir):
    from device.bundle import load_private_key, load_public_key

    key = load_private_key(fdir / "keys/fleet_signing.key")
    assert load_public_key(fdir / "keys/fleet_signing.pub").public_bytes_raw() == key.public_key().public_bytes_raw()
    assert stat.S_IMODE((fdir / "keys/fleet_signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((fdir / "secrets/server-mqtt.env").stat().st_mode) == 0o600
    assert "scanemon.server:$7$" in (fdir / "passwd").read_text()
    assert run(fdir, "init") == 1  # refuses to clobber a fleet
    settings = yaml.safe_load((fdir / "fleet.yaml").read_text())
    assert settings["broker"] == {**settings["broker"], "host": "mqtt.example", "port": 8883, "tls": True}


def test_with_ca(tmp_path):
    from cryptography import x509

    d = tmp_path / "f"
    assert run(d, "init", "--broker-host", "10.0.0.5", "--with-ca") == 0
    ca = x509.load_pem_x509_certificate((d / "ca/ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "ca/broker.crt").read_bytes())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                           __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"])
                           .ECDSA(cert.signature_hash_algorithm))
    assert run(d, "broker-config", "--pid-file", str(tmp_path / "pid")) == 0
    conf = (d / "mosquitto.conf").read_text()
    assert "certfile" in conf and "listener 8883 0.0.0.0" in conf and "allow_anonymous false" in conf


def test_device_configs_validate_against_device_schemas(fdir):
    from device.config import load_config as load_device_config
    from device.updater import load_config as load_updater_config

    assert run(fdir, "device", "add", "Kitchen Scanner") == 0
    d = fdir / "devices/kitchen-scanner"
    cfg = load_device_config(d / "device.yaml")  # the relay's own schema (extra=forbid)
    assert cfg.device_id == "kitchen-scanner" and cfg.mqtt.username == "kitchen-scanner" and cfg.mqtt.tls
    assert cfg.mqtt.port == 8883 and len(cfg.mqtt.password) >= 24
    up = load_updater_config(d / "updater.yaml")
    assert up.server.url == "https://scan.example" and up.bundles.public_key == "/etc/scanemon/fleet_signing.pub"
    assert stat.S_IMODE((d / "device.yaml").stat().st_mode) == 0o600
    assert run(fdir, "device", "add", "Kitchen Scanner", "--id", "Bad ID!") == 1
    assert run(fdir, "device", "add", "Other", "--id", "kitchen-scanner") == 1  # taken by another name


def test_bulk_50_from_csv_into_database(fdir, tmp_path, db_url):
    from sqlalchemy import func, select

    from server.auth import lookup_token
    from server.db.models import ApiToken, Device

    db = _db_with_owner(db_url)
    path = tmp_path / "devices.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "id", "collection", "user"])
        for i in range(1, 51):
            w.writerow([f"Store {i:02d} counter", f"store-{i:02d}", "Binder" if i % 2 else "Bulk", "alice"])
    assert run(fdir, "device", "bulk", "--csv", str(path), "--database-url", db_url) == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Device)) == 50
        dev = s.get(Device, "store-07")
        assert dev.name == "Store 07 counter" and dev.mqtt_username == "store-07" and dev.collection_id is not None
        assert s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.scopes.is_not(None))) == 50
    passwd = (fdir / "passwd").read_text()
    assert sum(line.startswith("store-") for line in passwd.splitlines()) == 50
    token = yaml.safe_load((fdir / "devices/store-07/updater.yaml").read_text())["server"]["token"]
    with db.session() as s:
        p = lookup_token(s, token)
        assert p is not None and p.scopes == frozenset({"device"})
    # Re-running is safe: nothing re-issued.
    assert run(fdir, "device", "bulk", "--csv", str(path), "--database-url", db_url) == 0
    assert (fdir / "passwd").read_text() == passwd
    # Revocation reaches the database: device marked, its token dead.
    assert run(fdir, "device", "revoke", "store-07", "--database-url", db_url) == 0
    with db.session() as s:
        assert s.get(Device, "store-07").revoked_at is not None
        assert lookup_token(s, token) is None
    assert "store-07:" not in (fdir / "passwd").read_text()
    db.dispose()


def test_bulk_csv_errors_name_the_line(fdir, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("name,id\nA one,dev-a\nA two,dev-a\n")
    assert run(fdir, "device", "bulk", "--csv", str(path)) == 1
    assert f"{path}:3: duplicate device id 'dev-a'" in capsys.readouterr().err
    path.write_text("name,colour\nx,red\n")
    assert run(fdir, "device", "bulk", "--csv", str(path)) == 1
    assert not (fdir / "devices").exists() or not any((fdir / "devices").iterdir())  # all or nothing


def test_unknown_user_or_collection_refused(fdir, sqlite_url):
    _db_with_owner(sqlite_url).dispose()
    assert run(fdir, "device", "add", "X1", "--user", "nobody", "--database-url", sqlite_url) == 1
    assert run(fdir, "device", "add", "X1", "--user", "alice", "--collection", "Nope",
               "--database-url", sqlite_url) == 1
    assert run(fdir, "device", "add", "X1", "--user", "alice", "--collection", "Binder",
               "--database-url", sqlite_url) == 0


def test_boot_files(fdir, tmp_path):
    assert run(fdir, "device", "add", "Counter 1") == 0
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@laptop\n")
    out = tmp_path / "boot"
    out.mkdir()
    (out / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=1234-02 rootwait\n")
    assert run(fdir, "boot-files", str(out), "--device", "counter-1", "--ssh-key", str(key), "--wifi-ssid", "shop",
               "--wifi-password", "pw12345678", "--patch-cmdline") == 0
    ud = (out / "user-data").read_text()
    assert ud.startswith("#cloud-config\n")
    data = yaml.safe_load(ud)
    assert data["hostname"] == "scanemon-counter-1" and data["runcmd"] == [["bash", "/boot/firmware/scanemon/install.sh"]]
    assert data["users"][0]["ssh_authorized_keys"][0].startswith("ssh-ed25519")
    assert yaml.safe_load((out / "network-config").read_text())["network"]["wifis"]["wlan0"]["access-points"]["shop"]
    install = (out / "scanemon/install.sh").read_text()
    assert "--system-site-packages" in install and "--no-deps" in install and "systemctl enable" in install
    assert subprocess.run(["bash", "-n", str(out / "scanemon/install.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(out / "firstrun.sh")]).returncode == 0
    req = (out / "scanemon/requirements-device.txt").read_text()
    pins = [l for l in req.splitlines() if l and not l.startswith("#")]
    assert pins and all("==" in l for l in pins) and not any(l.startswith(("numpy", "opencv")) for l in pins)
    for unit in ("scanemon-device.service", "scanemon-updater.service"):
        text = (out / "scanemon" / unit).read_text()
        assert "Restart=on-failure" in text and "WatchdogSec=" in text and "Type=notify" in text
        assert "{{" not in text
    assert "systemd.run=/boot/firmware/firstrun.sh" in (out / "cmdline.txt").read_text()
    # The real credentials travel on the card (and install.sh shreds them after copying).
    from device.config import load_config

    assert load_config(out / "scanemon/device.yaml").device_id == "counter-1"
    assert (out / "scanemon/fleet_signing.pub").read_bytes() == (fdir / "keys/fleet_signing.pub").read_bytes()
    # Revoked devices get no boot files.
    assert run(fdir, "device", "revoke", "counter-1") == 0
    assert run(fdir, "boot-files", str(tmp_path / "b2"), "--device", "counter-1") == 1


def test_server_units(tmp_path):
    assert provision(["units", str(tmp_path / "u")]) == 0
    text = (tmp_path / "u/scanemon-server.service").read_text()
    assert "provisioning.healthwatch" in text and "WatchdogSec=30" in text and "Restart=on-failure" in text
    # Every ingest@K instance is its own worker (own client id and session), not K copies of worker 0.
    assert "ingest --worker-index %i" in (tmp_path / "u/scanemon-ingest@.service").read_text()
    assert "resolver worker" in (tmp_path / "u/scanemon-resolver.service").read_text()


def test_sd_notify_and_healthwatch(tmp_path):
    from device.sdnotify import SdNotify

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        n = SdNotify(path)
        assert n.ready("up") and sock.recv(100) == b"READY=1\nSTATUS=up"
        assert n.watchdog() and sock.recv(100) == b"WATCHDOG=1"
        assert not SdNotify("").ready()  # outside systemd: a no-op
        # healthwatch: READY once the child's /healthz answers, then watchdog pings.
        from tests.services import free_port

        port = free_port()
        env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("WATCHDOG_USEC", None)
        proc = subprocess.Popen([os.sys.executable, "-m", "provisioning.healthwatch", "--url",
                                 f"http://127.0.0.1:{port}/", "--interval", "0.2", "--",
                                 os.sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = sock.recv(100)
            assert first.startswith(b"READY=1")
            assert sock.recv(100) == b"WATCHDOG=1"
        finally:
            proc.terminate()
            assert proc.wait(10) is not None
    finally:
        sock.close()


def test_fleet_devices_api(fdir, sqlite_url, tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.auth import issue_token
    from server.config import ServerSettings
    from server.db.models import Device, Scan, User

    _db_with_owner(sqlite_url).dispose()
    for name in ("Front desk", "Back office"):
        assert run(fdir, "device", "add", name, "--user", "alice", "--database-url", sqlite_url) == 0
    assert run(fdir, "device", "add", "Spare", "--database-url", sqlite_url) == 0
    assert run(fdir, "device", "revoke", "spare", "--database-url", sqlite_url) == 0
    app = create_app(ServerSettings(database_url=sqlite_url, data_dir=tmp_path / "var", readyz_check_broker=False))
    now = datetime.now(timezone.utc)
    with app.state.db.session() as s:
        admin = User(username="root", is_admin=True)
        bob = User(username="bob")
        s.add_all([admin, bob])
        s.flush()
        alice = s.query(User).filter_by(username="alice").one()
        tok_admin = issue_token(s, admin, "t", ["admin"])
        tok_alice = issue_token(s, alice, "t", ["read"])
        tok_bob = issue_token(s, bob, "t", ["read"])
        front = s.get(Device, "front-desk")
        front.state, front.last_seen_at, front.bundle_version, front.outbox_depth = "online", now, "v7", 12
        back = s.get(Device, "back-office")
        back.state, back.last_seen_at = "online", now - timedelta(hours=2)  # said online, then went silent
        for i in range(3):
            s.add(Scan(scan_id=f"00000000-0000-7000-8000-00000000000{i}", device_id="front-desk", seq=i + 1,
                       captured_at=now - timedelta(minutes=i), decision="accept", status="accepted"))
        s.add(Scan(scan_id="00000000-0000-7000-8000-0000000000ff", device_id="front-desk", seq=9,
                   captured_at=now - timedelta(days=2), decision="accept", status="accepted"))
    with TestClient(app) as client:
        r = client.get("/api/v1/fleet/devices", headers={"Authorization": f"Bearer {tok_admin}"})
        assert r.status_code == 200, r.text
        body = r.json()
        by_id = {d["device_id"]: d for d in body["devices"]}
        assert by_id["front-desk"]["online"] and by_id["front-desk"]["state"] == "online"
        assert by_id["front-desk"]["scans_today"] == 3 or now.hour == 0  # (a scan 2 min ago may be "yesterday")
        assert by_id["front-desk"]["outbox_depth"] == 12 and by_id["front-desk"]["bundle_version"] == "v7"
        assert by_id["back-office"]["state"] == "stale" and not by_id["back-office"]["online"]
        assert by_id["spare"]["state"] == "revoked"
        assert body["summary"]["total"] == 3 and body["summary"]["online"] == 1 and body["summary"]["revoked"] == 1
        mine = client.get("/api/v1/fleet/devices", headers={"Authorization": f"Bearer {tok_alice}"}).json()
        assert {d["device_id"] for d in mine["devices"]} == {"front-desk", "back-office"}
        assert client.get("/api/v1/fleet/devices", headers={"Authorization": f"Bearer {tok_bob}"}).json()["devices"] == []
        one = client.get("/api/v1/fleet/devices/front-desk", headers={"Authorization": f"Bearer {tok_alice}"})
        assert one.status_code == 200 and one.json()["telemetry"] == {}
        assert client.get("/api/v1/fleet/devices/spare",
                          headers={"Authorization": f"Bearer {tok_alice}"}).status_code == 404
        assert client.get("/api/v1/fleet/devices").status_code == 401
        assert client.get("/api/v1/fleet/devices?tz=Mars/Base",
                          headers={"Authorization": f"Bearer {tok_admin}"}).status_code == 422
        # a key no file name can be (64 four-byte characters: zoneinfo raises OSError, as for what schemathesis
        # sent) or longer than any zone's name is a clear 422, not a 500
        for tz in ("\U0001F0CF" * 64, "T̺o͞ ̷i̲n̝v̟o̶k" * 6, "Europe/" + "x" * 250):
            for path in ("/api/v1/fleet/devices", "/api/v1/fleet/devices/front-desk"):
                r = client.get(path, params={"tz": tz}, headers={"Authorization": f"Bearer {tok_admin}"})
                assert r.status_code == 422, (path, r.status_code)
        assert client.get("/api/v1/fleet/devices/front-desk", params={"tz": "Europe/Berlin"},
                          headers={"Authorization": f"Bearer {tok_admin}"}).status_code == 200
