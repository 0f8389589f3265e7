"""Provisioning state: the fleet directory, device credentials, broker password file and ACL.

Layout of ``--fleet-dir`` (default ./fleet)::

    fleet.yaml                 FleetSettings: broker/server addresses, paths, service accounts
    devices.json               every device ever enrolled (revoked ones stay, marked)
    keys/fleet_signing.key     ed25519 private key that signs bundles (0600; keep offline if you can)
    keys/fleet_signing.pub     its public half (goes onto every device)
    ca/ca.key, ca/ca.crt       optional CA for broker TLS / client certificates (init --with-ca)
    passwd                     Mosquitto password file (PBKDF2-SHA512 hashes, written via mosquitto_passwd)
    acl                        Mosquitto ACL file (pattern ACLs, rendered)
    mosquitto.conf             rendered broker configuration (broker-config)
    secrets/server-mqtt.env    the server/ingest broker account (SCANEMON_MQTT__USERNAME/PASSWORD)
    devices/<id>/device.yaml   the device's config with its MQTT password (0600; copied into boot files)
    devices/<id>/updater.yaml  the updater's config with the device's API token (0600)

Every mutation takes an exclusive lock on ``.lock`` and writes files atomically (temp + rename), so a
broker reloading (SIGHUP) in the middle of an update reads either the old or the new file, never half.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field

from device.configfile import load_model
from device.protocol import DEVICE_ID_RE, Topics

#: Service accounts contain a '.', which DEVICE_ID_RE forbids: a device id can never collide with one.
SERVER_USER = "scanemon.server"
SERVICE_USERS = (SERVER_USER,)


class ProvisionError(RuntimeError):
    pass


class BrokerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("scanemon.local", description="Broker host name devices connect to.")
    port: int = Field(1883, description="Broker port devices connect to (8883 with TLS).", ge=1, le=65535)
    tls: bool = Field(False, description="Devices connect with TLS.")
    ca_file: str | None = Field(None, description="CA certificate devices trust for the broker (path on the device).")
    pid_file: str | None = Field(None, description="Broker pid file: add/revoke send SIGHUP to this pid "
                                 "(set by broker-config, so a fleet never signals a broker it did not configure).")
    reload_command: str | None = Field(None, description="Instead of the pid file: a command that reloads the "
                                       "broker, e.g. 'systemctl reload mosquitto'.")


class ServerSettingsRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field("http://scanemon.local:8000", description="Server URL devices download bundles from.")


class DeviceDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle_root: str = Field("/var/lib/scanemon", description="Bundle root on the device.")
    outbox_path: str = Field("/var/lib/scanemon/outbox.db", description="Outbox database on the device.")
    mqtt_protocol: str = Field("5", description="MQTT version devices speak ('5' or '3.1.1').")


class FleetSettings(BaseModel):
    """fleet.yaml."""

    model_config = ConfigDict(extra="forbid")
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="Broker as devices see it.")
    server: ServerSettingsRef = Field(default_factory=ServerSettingsRef, description="Server as devices see it.")
    devices: DeviceDefaults = Field(default_factory=DeviceDefaults, description="Defaults written into device configs.")


class DeviceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="Device id = MQTT username.")
    name: str = Field(description="Human name.")
    user: str | None = Field(None, description="Owner username on the server.")
    collection: str | None = Field(None, description="Collection (id or name) its scans go to.")
    created_at: datetime = Field(description="Enrolment time.")
    revoked_at: datetime | None = Field(None, description="Revocation time.")
    registered: bool = Field(False, description="Registered in the server database.")
    token_prefix: str | None = Field(None, description="Prefix of the device's API token (for recognition).")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- passwords


def hash_password(username: str, password: str) -> str:
    """A Mosquitto 2 password-file line for ``username``: via ``mosquitto_passwd`` when installed,
    otherwise the same $7$ PBKDF2-SHA512 format computed here (what mosquitto_passwd writes)."""
    exe = shutil.which("mosquitto_passwd")
    if exe:
        with tempfile.TemporaryDirectory() as tmp:
            pw = Path(tmp) / "pw"
            pw.touch(mode=0o600)
            subprocess.run([exe, "-b", str(pw), username, password], check=True, capture_output=True)
            line = pw.read_text().strip()
        if line.startswith(f"{username}:$"):
            return line
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"{username}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def read_passwd(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if ":" in line and not line.startswith("#"):
                user, _, rest = line.partition(":")
                out[user] = f"{user}:{rest}"
    return out


def write_passwd(path: Path, lines: dict[str, str]) -> None:
    atomic_write(path, "".join(lines[u] + "\n" for u in sorted(lines)), 0o640)


# --------------------------------------------------------------------------------------------- ACL


def render_acl(devices: list[DeviceRecord]) -> str:
    """Mosquitto ACL: one pattern block confines every device to its own subtree (%u = username = device id).

    Devices write scans/status/telemetry and read acks/results and the fleet bundle announcement — they
    can never write acks or results, so a device cannot ack (and thereby drop) its own scans. The server
    account reads what devices send and writes acks/results/fleet messages.
    """
    d = Topics.DEVICES
    active = [x.id for x in devices if x.revoked_at is None]
    revoked = [x.id for x in devices if x.revoked_at is not None]
    lines = [
        "# Scanemon broker ACL, rendered by scanemon-provision. Do not edit: re-render with",
        "# `scanemon-provision broker-config` (add/revoke rewrite it too). Anything not granted is denied.",
        "",
        f"# Server, ingest workers and bundle publisher (shared subscriptions $share/<group>/… are checked",
        "# against the topic without the $share prefix).",
        f"user {SERVER_USER}",
        f"topic read {d}/+/scans",
        f"topic read {d}/+/status",
        f"topic read {d}/+/telemetry",
        f"topic write {d}/+/acks",
        f"topic write {d}/+/results",
        f"topic readwrite {Topics.ROOT}/fleet/#",
        "",
        "# Every device: only its own subtree (username = device id), and no writes to acks/results.",
        f"pattern write {d}/%u/scans",
        f"pattern write {d}/%u/status",
        f"pattern write {d}/%u/telemetry",
        f"pattern read {d}/%u/acks",
        f"pattern read {d}/%u/results",
        f"pattern read {Topics.FLEET_BUNDLE}",
        "",
        f"# Enrolled devices ({len(active)} active): {', '.join(active) or '-'}",
        f"# Revoked devices ({len(revoked)}, absent from the password file): {', '.join(revoked) or '-'}",
    ]
    return "\n".join(lines) + "\n"


def render_auth_conf(fleet_dir: Path, passwd: str | None = None, acl: str | None = None) -> str:
    """The authentication part of mosquitto.conf (also what tests append to their broker config)."""
    return "\n".join([
        "allow_anonymous false",
        f"password_file {passwd or (fleet_dir / 'passwd').resolve()}",
        f"acl_file {acl or (fleet_dir / 'acl').resolve()}",
    ]) + "\n"


# --------------------------------------------------------------------------------------------- fleet dir


class Fleet:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    @property
    def settings_path(self) -> Path:
        return self.root / "fleet.yaml"

    @property
    def devices_path(self) -> Path:
        return self.root / "devices.json"

    @property
    def passwd_path(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.root / "acl"

    @property
    def signing_key_path(self) -> Path:
        return self.root / "keys" / "fleet_signing.key"

    @property
    def public_key_path(self) -> Path:
        return self.root / "keys" / "fleet_signing.pub"

    def device_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def exists(self) -> bool:
        return self.settings_path.is_file()

    def require(self) -> "Fleet":
        if not self.exists():
            raise ProvisionError(f"{self.root} is not a fleet directory (run `scanemon-provision init` first)")
        return self

    @contextmanager
    def locked(self) -> Iterator["Fleet"]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self

    # settings
    def settings(self) -> FleetSettings:
        return load_model(FleetSettings, self.settings_path)

    def save_settings(self, s: FleetSettings) -> None:
        text = "# Scanemon fleet settings (scanemon-provision). Devices get these addresses in their config.\n"
        text += yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False)
        atomic_write(self.settings_path, text, 0o644)

    # devices
    def devices(self) -> list[DeviceRecord]:
        if not self.devices_path.exists():
            return []
        data = json.loads(self.devices_path.read_text())
        return [DeviceRecord.model_validate(d) for d in data.get("devices", [])]

    def save_devices(self, devices: list[DeviceRecord]) -> None:
        data = {"devices": [d.model_dump(mode="json") for d in sorted(devices, key=lambda d: d.id)]}
        atomic_write(self.devices_path, json.dumps(data, indent=2) + "\n", 0o644)

    def get(self, device_id: str) -> DeviceRecord:
        for d in self.devices():
            if d.id == device_id:
                return d
        raise ProvisionError(f"no device {device_id!r} in {self.devices_path}")

    def write_acl(self) -> None:
        atomic_write(self.acl_path, render_acl(self.devices()), 0o640)

    # broker
    def reload_broker(self, pid: int | None = None) -> str:
        """SIGHUP the broker (re-reads password file and ACL; kicks clients whose credentials went away)."""
        s = self.settings().broker
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            return f"sent SIGHUP to broker pid {pid}"
        if s.reload_command:
            res = subprocess.run(s.reload_command, shell=True, capture_output=True, text=True)
            if res.returncode:
                raise ProvisionError(f"broker reload failed: {s.reload_command}: {res.stderr.strip()}")
            return f"ran {s.reload_command!r}"
        if s.pid_file and Path(s.pid_file).is_file():
            pid = int(Path(s.pid_file).read_text().strip())
            os.kill(pid, signal.SIGHUP)
            return f"sent SIGHUP to broker pid {pid} ({s.pid_file})"
        return "broker NOT reloaded (no --broker-pid, reload_command or pid file): reload it yourself"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return s[:64]


def valid_device_id(device_id: str) -> bool:
    return bool(DEVICE_ID_RE.match(device_id))


def mqtt_connect_rc(host: str, port: int, username: str, password: str, timeout: float = 2.0) -> int | None:
    """One MQTT 3.1.1 CONNECT with credentials; the CONNACK return code (0 ok, 4 bad credentials,
    5 not authorised), or None when nothing answered."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    var = b"\x00\x04MQTT\x04\xc2\x00\x0a"  # level 4, username+password+clean session, keepalive 10
    payload = s(f"probe-{secrets.token_hex(4)}".encode()) + s(username.encode()) + s(password.encode())
    body = var + payload
    rl, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        rl += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"\x10" + rl + body)
            resp = sock.recv(4)
            if resp[:1] == b"\x20" and len(resp) >= 4:
                if resp[3] == 0:
                    sock.sendall(b"\xe0\x00")
                return resp[3]
    except OSError:
        return None
    return None


def wait_refused(host: str, port: int, username: str, password: str, timeout: float = 5.0) -> float | None:
    """Seconds until the broker refuses these credentials (polling), or None if still accepted at timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rc = mqtt_connect_rc(host, port, username, password)
        if rc in (4, 5):
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def device_yaml(device_id: str, password: str, settings: FleetSettings, *, redact: bool = False) -> str:
    """The appliance's device.yaml (schema: device.config.DeviceConfig)."""
    b = settings.broker
    mqtt: dict[str, Any] = {"host": b.host, "port": b.port, "username": device_id,
                            "password": "<redacted>" if redact else password,
                            "protocol": settings.devices.mqtt_protocol, "tls": b.tls}
    if b.ca_file:
        mqtt["ca_certs"] = b.ca_file
    data = {"device_id": device_id, "mqtt": mqtt, "outbox": {"path": settings.devices.outbox_path}}
    head = (f"# Scanemon device configuration for {device_id}, written by scanemon-provision.\n"
            "# Holds the device's broker password: keep it 0640 root:scanemon.\n")
    return head + yaml.safe_dump(data, sort_keys=False)


def updater_yaml(device_id: str, token: str, settings: FleetSettings, *, redact: bool = False) -> str:
    """The bundle updater's updater.yaml (schema: device.updater.UpdaterConfig)."""
    data = {
        "device_config": "/etc/scanemon/device.yaml",
        "server": {"url": settings.server.url, "token": "<redacted>" if redact and token else token},
        "bundles": {"root": settings.devices.bundle_root, "public_key": "/etc/scanemon/fleet_signing.pub",
                    "self_test": "device.bundle:structural_self_test"},
    }
    head = (f"# Scanemon bundle updater configuration for {device_id}, written by scanemon-provision.\n"
            "# Holds the device's API token (scope 'device'): keep it 0640 root:scanemon.\n")
    return head + yaml.safe_dump(data, sort_keys=False)
