"""Broker ACLs and revocation on a real Mosquitto, configured with the files broker-config renders.

Checked with real paho clients: a device cannot publish or subscribe on another device's topics, cannot
ack its own scans or fake a bundle announcement; unknown and revoked credentials get CONNACK "not
authorised"; revocation kicks a connected device and refuses it again — the cut-off time is printed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from device.protocol import Topics
from provisioning.cli import main as provision
from provisioning.fleet import SERVER_USER, Fleet, render_auth_conf

pytestmark = pytest.mark.mosquitto

SILENCE_S = 1.0  # how long we wait to be sure a message that must not arrive does not


class Client:
    """A paho MQTT 5 client that records connect results, disconnects and messages with timestamps."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str | None = None):
        self.port = port
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{username}-{time.time_ns()}",
                             protocol=mqtt.MQTTv5)
        if username:
            self.c.username_pw_set(username, password)
        self.connack = threading.Event()
        self.rc = None
        self.disconnected_at: float | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list] = {}
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, _c, _u, _f, rc, _p):
        self.rc = rc
        self.connack.set()

    def _on_disconnect(self, _c, _u, _f, rc, _p):
        if self.disconnected_at is None and self.rc is not None and not self.rc.is_failure:
            self.disconnected_at = time.monotonic()

    def _on_message(self, _c, _u, m):
        with self.cond:
            self.messages.append((m.topic, m.payload))
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, codes, _p):
        with self.cond:
            self.subacks[mid] = codes
            self.cond.notify_all()

    def connect(self) -> "Client":
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connack.wait(10), "no CONNACK"
        return self

    @property
    def ok(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def subscribe(self, topic: str) -> list:
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), "no SUBACK"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def forge(self, topic: str, payload: bytes, retain: bool = False) -> str:
        """Publish where the ACL says no. Mosquitto 2.0 drops the message; for an MQTT 5 client it may
        also drop the connection. Returns what happened to the connection."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not info.is_published() and self.disconnected_at is None:
            time.sleep(0.01)
        return "disconnected" if self.disconnected_at is not None else "puback"

    def wait_for(self, payload: bytes, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(p == payload for _, p in self.messages), timeout)

    def got(self, payload: bytes) -> bool:
        with self.cond:
            return any(p == payload for _, p in self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fleet(tmp_path, mosquitto_factory):
    """A fleet with devices pi-a, pi-b, pi-c, and a real broker running on the rendered auth files."""
    fdir = tmp_path / "fleet"
    assert provision(["--fleet-dir", str(fdir), "init", "--broker-host", "127.0.0.1"]) == 0
    for name in ("pi-a", "pi-b", "pi-c"):
        assert provision(["--fleet-dir", str(fdir), "device", "add", name]) == 0
    pid_file = tmp_path / "mosquitto.pid"
    assert provision(["--fleet-dir", str(fdir), "broker-config", "--pid-file", str(pid_file)]) == 0
    conf = (fdir / "mosquitto.conf").read_text()
    assert f"password_file {(fdir / 'passwd').resolve()}" in conf and f"acl_file {(fdir / 'acl').resolve()}" in conf
    # tests/services.Mosquitto writes its own listener/persistence lines; the rendered auth part goes on top
    # (later lines win), so the broker enforces exactly the rendered password file and ACL.
    broker = mosquitto_factory(extra_conf=render_auth_conf(fdir))
    env = dict(line.split("=", 1) for line in (fdir / "secrets/server-mqtt.env").read_text().split())
    creds = {"server": (SERVER_USER, env["SCANEMON_MQTT__PASSWORD"])}
    for d in ("pi-a", "pi-b", "pi-c"):
        cfg = yaml.safe_load((fdir / "devices" / d / "device.yaml").read_text())
        creds[d] = (cfg["mqtt"]["username"], cfg["mqtt"]["password"])
    clients: list[Client] = []

    def connect(who: str, password: str | None = None) -> Client:
        user, pw = creds.get(who, (who, None))
        c = Client(broker.port, user, password if password is not None else pw)
        clients.append(c)
        return c.connect()

    yield {"dir": fdir, "broker": broker, "connect": connect, "creds": creds}
    for c in clients:
        c.close()


def test_rendered_acl_is_pattern_based(fleet):
    acl = (fleet["dir"] / "acl").read_text()
    assert "pattern write scanemon/v1/devices/%u/scans" in acl
    assert "pattern read scanemon/v1/devices/%u/acks" in acl
    assert "pattern write scanemon/v1/devices/%u/acks" not in acl and "%u/#" not in acl
    passwd = (fleet["dir"] / "passwd").read_text()
    assert "pi-a:$7$" in passwd and fleet["creds"]["pi-a"][1] not in passwd  # hashed, never plaintext


def test_device_confined_to_own_subtree(fleet):
    server = fleet["connect"]("server")
    a, b = fleet["connect"]("pi-a"), fleet["connect"]("pi-b")
    assert server.ok and a.ok and b.ok
    # The ingest workers' shared subscription passes the ACL.
    assert server.subscribe(Topics.shared_scans())[0].value < 0x80
    # Own topic: delivered.
    a.publish(Topics.scans("pi-a"), b"a-own")
    assert server.wait_for(b"a-own")
    # B's topic: silently dropped by the broker (MQTT 3.1.1/5 semantics for a denied publish).
    a.forge(Topics.scans("pi-b"), b"a-as-b")
    fleet["connect"]("pi-a").forge(Topics.status("pi-b"), b"a-as-b-status")
    b.publish(Topics.scans("pi-b"), b"b-own")  # control: arrives after the forged ones would have
    assert server.wait_for(b"b-own")
    time.sleep(SILENCE_S)
    assert not server.got(b"a-as-b") and not server.got(b"a-as-b-status")


def test_device_cannot_read_other_devices_topics(fleet):
    server = fleet["connect"]("server")
    a, b = fleet["connect"]("pi-a"), fleet["connect"]("pi-b")
    codes = a.subscribe(Topics.acks("pi-b"))
    wildcard = a.subscribe(Topics.all_devices("acks"))
    everything = a.subscribe("scanemon/#")
    assert b.subscribe(Topics.acks("pi-b"))[0].value < 0x80
    server.publish(Topics.acks("pi-b"), b"ack-for-b")
    server.publish(Topics.acks("pi-a"), b"ack-for-a")
    assert b.wait_for(b"ack-for-b")  # control: the real owner gets it
    assert a.wait_for(b"ack-for-a")  # a's wildcard subscriptions still deliver a's own acks
    time.sleep(SILENCE_S)
    assert not a.got(b"ack-for-b"), f"pi-a read pi-b's acks (suback {codes}, {wildcard}, {everything})"
    # And a cannot see b's scans either.
    a.subscribe(Topics.all_devices("scans"))
    b.publish(Topics.scans("pi-b"), b"b-scan")
    assert server.subscribe(Topics.all_devices("scans"))[0].value < 0x80
    b.publish(Topics.scans("pi-b"), b"b-scan-2")
    assert server.wait_for(b"b-scan-2")
    time.sleep(SILENCE_S)
    assert not a.got(b"b-scan") and not a.got(b"b-scan-2")


def test_device_cannot_ack_its_own_scans(fleet):
    server = fleet["connect"]("server")
    a = fleet["connect"]("pi-a")
    relay = fleet["connect"]("pi-a")  # a second session of the same device: its relay listening for acks
    assert relay.subscribe(Topics.acks("pi-a"))[0].value < 0x80
    relay.subscribe(Topics.results("pi-a"))
    a.forge(Topics.acks("pi-a"), b"forged-ack")
    fleet["connect"]("pi-a").forge(Topics.results("pi-a"), b"forged-result")
    server.publish(Topics.acks("pi-a"), b"real-ack")
    assert relay.wait_for(b"real-ack")
    time.sleep(SILENCE_S)
    assert not relay.got(b"forged-ack") and not relay.got(b"forged-result")


def test_device_cannot_fake_bundle_announcement(fleet):
    server = fleet["connect"]("server")
    a, b = fleet["connect"]("pi-a"), fleet["connect"]("pi-b")
    assert b.subscribe(Topics.FLEET_BUNDLE)[0].value < 0x80
    a.forge(Topics.FLEET_BUNDLE, b"evil-bundle", retain=True)
    server.publish(Topics.FLEET_BUNDLE, b"real-bundle", retain=True)
    assert b.wait_for(b"real-bundle")
    time.sleep(SILENCE_S)
    assert not b.got(b"evil-bundle")


def test_unknown_and_wrong_credentials_refused(fleet):
    for who, pw in (("pi-zzz", "whatever"), ("pi-a", "wrong-password"), (SERVER_USER, "nope")):
        c = fleet["connect"](who, pw)
        assert not c.ok and c.rc.value in (0x86, 0x87), f"{who}: {c.rc}"
    anon = Client(fleet["broker"].port, None, None).connect()
    assert not anon.ok, "anonymous access must be off"
    anon.close()


def test_python_hash_fallback_is_accepted_by_mosquitto(fleet, monkeypatch):
    """Hosts without mosquitto_passwd write the same $7$ PBKDF2-SHA512 lines; the broker accepts them."""
    import provisioning.fleet as pf

    monkeypatch.setattr(pf.shutil, "which", lambda _name: None)
    line = pf.hash_password("pi-py", "s3cret-pw")
    assert line.startswith("pi-py:$7$101$")
    lines = pf.read_passwd(fleet["dir"] / "passwd")
    lines["pi-py"] = line
    pf.write_passwd(fleet["dir"] / "passwd", lines)
    fleet["broker"].proc.send_signal(1)  # SIGHUP
    deadline = time.monotonic() + 5
    while True:
        c = fleet["connect"]("pi-py", "s3cret-pw")
        if c.ok or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert c.ok


def test_revocation_cut_off(fleet, capsys):
    broker = fleet["broker"]
    server = fleet["connect"]("server")
    a, b = fleet["connect"]("pi-a"), fleet["connect"]("pi-b")
    assert a.ok and b.ok
    server.subscribe(Topics.all_devices("scans"))

    t0 = time.monotonic()
    rc = provision(["--fleet-dir", str(fleet["dir"]), "device", "revoke", "pi-a",
                    "--broker-pid", str(broker.proc.pid)])
    t_cli = time.monotonic() - t0
    assert rc == 0
    # 1. The live connection is dropped by the broker.
    while a.disconnected_at is None and time.monotonic() - t0 < 10:
        time.sleep(0.005)
    assert a.disconnected_at is not None, "revoked device was not disconnected"
    t_kicked = a.disconnected_at - t0
    # 2. Reconnecting with the old credentials is refused.
    refused_at = None
    while time.monotonic() - t0 < 10:
        c = fleet["connect"]("pi-a")
        if not c.ok:
            assert c.rc.value in (0x86, 0x87)
            refused_at = time.monotonic() - t0
            break
    assert refused_at is not None, "revoked credentials still accepted"
    # Other devices are unaffected.
    b.publish(Topics.scans("pi-b"), b"still-here")
    assert server.wait_for(b"still-here")
    assert b.disconnected_at is None
    assert "pi-a" not in (fleet["dir"] / "passwd").read_text()
    assert "Revoked devices (1, absent from the password file): pi-a" in (fleet["dir"] / "acl").read_text()
    with capsys.disabled():
        print(f"\nREVOCATION CUT-OFF: revoke command {t_cli * 1000:.0f} ms, live connection dropped after "
              f"{t_kicked * 1000:.0f} ms, reconnect refused (CONNACK not authorised) after {refused_at * 1000:.0f} ms")
    # A correctness bound, not a benchmark: the requirement is "within 1 s"; this leaves CI slack.
    assert refused_at < 5.0


def test_revoke_cli_verify(fleet, capsys):
    rc = provision(["--fleet-dir", str(fleet["dir"]), "device", "revoke", "pi-c", "--broker-pid",
                    str(fleet["broker"].proc.pid), "--verify", "--verify-host", "127.0.0.1",
                    "--verify-port", str(fleet["broker"].port)])
    out = capsys.readouterr().out
    assert rc == 0 and "verified:" in out and "refuses pi-c" in out
    with capsys.disabled():
        print("\n" + out.strip())
