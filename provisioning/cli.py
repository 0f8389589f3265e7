"""``scanemon-provision``: fleet keys, device enrolment and revocation, broker config, first-boot files.

    scanemon-provision [--fleet-dir DIR] init [--broker-host H] [--broker-port P] [--tls] [--server-url URL] [--with-ca]
    scanemon-provision device add NAME [--id ID] [--collection C] [--user U] [--database-url URL] [--broker-pid PID]
    scanemon-provision device bulk --csv FILE [--database-url URL] [--broker-pid PID]
    scanemon-provision device list [--json]
    scanemon-provision device revoke ID [--database-url URL] [--broker-pid PID] [--verify]
    scanemon-provision broker-config [--port 8883] [--local-port 1883] [--pid-file …] [--etc-dir …]
    scanemon-provision boot-files DIR --device ID [--wheelhouse DIR] [--ssh-key FILE] [--wifi-ssid …]
    scanemon-provision units DIR   (server-side systemd units)

``--database-url`` defaults to $SCANEMON_DATABASE_URL; without one, devices are enrolled on the broker only
(register them later with ``device add --id … --database-url …`` again, which is idempotent).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from provisioning.fleet import (
    SERVER_USER,
    DeviceRecord,
    Fleet,
    FleetSettings,
    ProvisionError,
    atomic_write,
    device_yaml,
    hash_password,
    new_password,
    read_passwd,
    render_auth_conf,
    slug,
    updater_yaml,
    valid_device_id,
    wait_refused,
    write_passwd,
)

TEMPLATES = Path(__file__).with_name("templates")
VENV = "/opt/scanemon/venv"


def render(template: str, **values) -> str:
    """``{{key}}`` substitution; an unknown placeholder is an error, not an empty string."""
    text = (TEMPLATES / template).read_text()

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {template}: no value for {{{{{key}}}}}")
        return str(values[key])

    return re.sub(r"\{\{(\w+)\}\}", sub, text)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _out(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- init


def cmd_init(args) -> int:
    from device.bundle import generate_private_key, private_key_pem, public_key_pem

    fleet = Fleet(args.fleet_dir)
    with fleet.locked():
        if fleet.exists() and not args.force:
            raise ProvisionError(f"{fleet.root} is already a fleet directory (--force re-renders settings, "
                                 "never replaces existing keys)")
        settings = FleetSettings()
        settings.broker.host = args.broker_host
        tls = args.tls or args.with_ca
        settings.broker.port = args.broker_port or (8883 if tls else 1883)
        settings.broker.tls = tls
        settings.server.url = args.server_url
        if args.with_ca:
            settings.broker.ca_file = "/etc/scanemon/ca.crt"
        fleet.save_settings(settings)
        if not fleet.signing_key_path.exists():
            key = generate_private_key()
            atomic_write(fleet.signing_key_path, private_key_pem(key), 0o600)
            atomic_write(fleet.public_key_path, public_key_pem(key), 0o644)
            _out(f"fleet signing key: {fleet.signing_key_path} (ed25519; back it up, keep it off the server)")
        if args.with_ca and not (fleet.root / "ca" / "ca.crt").exists():
            _make_ca(fleet, args.broker_host)
            _out(f"CA: {fleet.root / 'ca' / 'ca.crt'}, broker certificate for {args.broker_host}")
        if not fleet.devices_path.exists():
            fleet.save_devices([])
        lines = read_passwd(fleet.passwd_path)
        env = fleet.root / "secrets" / "server-mqtt.env"
        if SERVER_USER not in lines or not env.exists():
            pw = new_password()
            lines[SERVER_USER] = hash_password(SERVER_USER, pw)
            atomic_write(env, f"SCANEMON_MQTT__USERNAME={SERVER_USER}\nSCANEMON_MQTT__PASSWORD={pw}\n", 0o600)
            _out(f"server broker account {SERVER_USER}: credentials in {env}")
        write_passwd(fleet.passwd_path, lines)
        fleet.write_acl()
    _out(f"fleet directory ready: {fleet.root}")
    return 0


def _make_ca(fleet: Fleet, broker_host: str) -> None:
    """A small private CA (EC P-256, 10 years) and a broker server certificate signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scanemon fleet CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    d = fleet.root / "ca"
    atomic_write(d / "ca.key", pem_key(ca_key), 0o600)
    atomic_write(d / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(broker_host))])
    except ValueError:
        san = x509.SubjectAlternativeName([x509.DNSName(broker_host)])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, broker_host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=825))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write(d / "broker.key", pem_key(key), 0o600)
    atomic_write(d / "broker.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)


# --------------------------------------------------------------------------------------------- database


class Registry:
    """Server-database side of enrolment: devices rows and device-scoped API tokens."""

    FLEET_USER = "scanemon-fleet"  # owns device tokens of devices enrolled without --user

    def __init__(self, url: str):
        from server.db.session import Database

        self.db = Database(url)

    def close(self) -> None:
        self.db.dispose()

    def register(self, rec: DeviceRecord) -> str:
        """Upsert the device row; issue a fresh device token (older ones for this device are revoked)."""
        from sqlalchemy import select

        from server.auth import issue_token
        from server.db.models import ApiToken, Device, User

        with self.db.session() as s:
            user, collection_id = self._resolve(s, rec)
            dev = s.get(Device, rec.id)
            if dev is None:
                dev = Device(id=rec.id, name=rec.name, state="offline", outbox_depth=0, last_seq=0, telemetry={})
                s.add(dev)
            dev.name, dev.mqtt_username, dev.revoked_at = rec.name, rec.id, None
            dev.user_id = user.id if user else None
            dev.collection_id = collection_id
            owner = user or s.scalar(select(User).where(User.username == self.FLEET_USER))
            if owner is None:
                owner = User(username=self.FLEET_USER, is_admin=False)
                s.add(owner)
                s.flush()
            for old in s.scalars(select(ApiToken).where(ApiToken.name == f"device:{rec.id}",
                                                        ApiToken.revoked_at.is_(None))):
                old.revoked_at = _now()
            return issue_token(s, owner, f"device:{rec.id}", ["device"])

    def check(self, rec: DeviceRecord) -> None:
        """Raise ProvisionError when the owner or collection does not exist (before anything is written)."""
        with self.db.session() as s:
            self._resolve(s, rec)

    def _resolve(self, s, rec: DeviceRecord):
        from sqlalchemy import select

        from server.db.models import Collection, User

        user = None
        if rec.user:
            user = s.scalar(select(User).where(User.username == rec.user))
            if user is None:
                raise ProvisionError(f"{rec.id}: no user {rec.user!r} in the server database")
        collection_id = None
        if rec.collection:
            q = select(Collection)
            q = q.where(Collection.id == int(rec.collection)) if rec.collection.isdigit() \
                else q.where(Collection.name == rec.collection)
            if user is not None:
                q = q.where(Collection.user_id == user.id)
            found = s.scalars(q).all()
            if len(found) != 1:
                raise ProvisionError(f"{rec.id}: collection {rec.collection!r} "
                                     f"{'not found' if not found else 'is ambiguous (give its id)'}")
            collection_id = found[0].id
        return user, collection_id

    def revoke(self, device_id: str) -> int:
        from sqlalchemy import select

        from server.db.models import ApiToken, Device

        with self.db.session() as s:
            dev = s.get(Device, device_id)
            if dev is not None:
                dev.revoked_at = _now()
                dev.state = "offline"
            n = 0
            for tok in s.scalars(select(ApiToken).where(ApiToken.name == f"device:{device_id}",
                                                        ApiToken.revoked_at.is_(None))):
                tok.revoked_at = _now()
                n += 1
            return n


def _registry(args) -> Registry | None:
    url = getattr(args, "database_url", None) or os.environ.get("SCANEMON_DATABASE_URL")
    if not url:
        return None
    if not getattr(args, "no_migrate", False):
        from server.db.migrate import upgrade

        upgrade(url)
    return Registry(url)


# --------------------------------------------------------------------------------------------- devices


def _enrol(fleet: Fleet, registry: Registry | None, name: str, device_id: str | None, collection: str | None,
           user: str | None, existing: dict[str, DeviceRecord], lines: dict[str, str]) -> DeviceRecord:
    device_id = device_id or slug(name)
    if not valid_device_id(device_id):
        raise ProvisionError(f"{name!r}: device id {device_id!r} is not valid (lowercase letters, digits, '-', '_'; "
                             "2-64 characters): pass --id")
    old = existing.get(device_id)
    if old is not None and old.revoked_at is None and old.name != name:
        raise ProvisionError(f"device id {device_id!r} is taken by {old.name!r}: pass another --id")
    rec = DeviceRecord(id=device_id, name=name, user=user, collection=collection,
                       created_at=old.created_at if old else _now())
    password = new_password()
    token = registry.register(rec) if registry else ""
    rec.registered = bool(registry) or bool(old and old.registered and old.revoked_at is None)
    rec.token_prefix = token.split("_")[1] if token else (old.token_prefix if old else None)
    settings = fleet.settings()
    ddir = fleet.device_dir(device_id)
    atomic_write(ddir / "device.yaml", device_yaml(device_id, password, settings), 0o600)
    if token or not (ddir / "updater.yaml").exists():
        atomic_write(ddir / "updater.yaml", updater_yaml(device_id, token, settings), 0o600)
    lines[device_id] = hash_password(device_id, password)
    existing[device_id] = rec
    return rec


def _commit(fleet: Fleet, existing: dict[str, DeviceRecord], lines: dict[str, str], args) -> None:
    fleet.save_devices(list(existing.values()))
    write_passwd(fleet.passwd_path, lines)
    fleet.write_acl()
    _out(fleet.reload_broker(getattr(args, "broker_pid", None)))


def cmd_device_add(args) -> int:
    fleet = Fleet(args.fleet_dir).require()
    registry = _registry(args)
    try:
        with fleet.locked():
            existing = {d.id: d for d in fleet.devices()}
            lines = read_passwd(fleet.passwd_path)
            rec = _enrol(fleet, registry, args.name, args.id, args.collection, args.user, existing, lines)
            _commit(fleet, existing, lines, args)
    finally:
        if registry:
            registry.close()
    _out(f"enrolled {rec.id} ({rec.name}): config in {fleet.device_dir(rec.id)}"
         + ("" if rec.registered else " — not registered in the server database (no --database-url)"))
    return 0


def cmd_device_bulk(args) -> int:
    """CSV with a header: name (required), id, collection, user. Existing active ids are skipped."""
    fleet = Fleet(args.fleet_dir).require()
    with open(args.csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ProvisionError(f"{args.csv}: no rows")
    unknown = set(rows[0]) - {"name", "id", "collection", "user"}
    if "name" not in rows[0] or unknown:
        raise ProvisionError(f"{args.csv}: columns must be name[,id][,collection][,user]; got {list(rows[0])}")
    registry = _registry(args)
    added, skipped, t = [], [], time.perf_counter()
    try:
        with fleet.locked():
            existing = {d.id: d for d in fleet.devices()}
            lines = read_passwd(fleet.passwd_path)
            seen: set[str] = set()
            todo: list[tuple[int, str, str, str | None, str | None]] = []
            for n, row in enumerate(rows, start=2):
                name = (row.get("name") or "").strip()
                did = (row.get("id") or "").strip() or slug(name)
                if not name:
                    raise ProvisionError(f"{args.csv}:{n}: empty name")
                if did in seen:
                    raise ProvisionError(f"{args.csv}:{n}: duplicate device id {did!r}")
                seen.add(did)
                if did in existing and existing[did].revoked_at is None and not args.rotate:
                    skipped.append(did)
                    continue
                if not valid_device_id(did):
                    raise ProvisionError(f"{args.csv}:{n}: device id {did!r} is not valid (lowercase letters, "
                                         "digits, '-', '_'; 2-64 characters): add an id column")
                old = existing.get(did)
                if old is not None and old.revoked_at is None and old.name != name:
                    raise ProvisionError(f"{args.csv}:{n}: device id {did!r} is taken by {old.name!r}")
                collection = (row.get("collection") or "").strip() or None
                user = (row.get("user") or "").strip() or None
                if registry:
                    try:
                        registry.check(DeviceRecord(id=did, name=name, user=user, collection=collection,
                                                    created_at=_now()))
                    except ProvisionError as exc:
                        raise ProvisionError(f"{args.csv}:{n}: {exc}") from exc
                todo.append((n, name, did, collection, user))
            # Everything checked: only now write anything (a bad row leaves the fleet untouched).
            for n, name, did, collection, user in todo:
                try:
                    added.append(_enrol(fleet, registry, name, did, collection, user, existing, lines))
                except ProvisionError as exc:
                    raise ProvisionError(f"{args.csv}:{n}: {exc}") from exc
            _commit(fleet, existing, lines, args)
    finally:
        if registry:
            registry.close()
    _out(f"enrolled {len(added)} devices, skipped {len(skipped)} already enrolled "
         f"({time.perf_counter() - t:.1f} s)")
    return 0


def cmd_device_list(args) -> int:
    fleet = Fleet(args.fleet_dir).require()
    devices = fleet.devices()
    if args.json:
        print(json.dumps([d.model_dump(mode="json") for d in devices], indent=2))
        return 0
    print(f"{'ID':24} {'NAME':28} {'USER':14} {'COLLECTION':14} {'DB':3} {'STATUS':8} CREATED")
    for d in devices:
        status = "revoked" if d.revoked_at else "active"
        print(f"{d.id:24} {d.name[:28]:28} {(d.user or '-'):14} {(d.collection or '-'):14} "
              f"{'yes' if d.registered else 'no':3} {status:8} {d.created_at:%Y-%m-%d}")
    return 0


def cmd_device_revoke(args) -> int:
    fleet = Fleet(args.fleet_dir).require()
    t0 = time.monotonic()
    registry = _registry(args)
    try:
        with fleet.locked():
            devices = {d.id: d for d in fleet.devices()}
            rec = devices.get(args.device_id)
            if rec is None:
                raise ProvisionError(f"no device {args.device_id!r}")
            rec.revoked_at = rec.revoked_at or _now()
            lines = read_passwd(fleet.passwd_path)
            lines.pop(rec.id, None)
            fleet.save_devices(list(devices.values()))
            write_passwd(fleet.passwd_path, lines)
            fleet.write_acl()
            msg = fleet.reload_broker(args.broker_pid)
            t_reload = time.monotonic() - t0
        tokens = registry.revoke(rec.id) if registry else None
    finally:
        if registry:
            registry.close()
    _out(f"revoked {rec.id}: removed from {fleet.passwd_path}; {msg} after {t_reload * 1000:.0f} ms"
         + (f"; {tokens} API token(s) revoked" if tokens is not None else "; database not updated (no --database-url)"))
    if args.verify:
        import yaml

        cfg = yaml.safe_load((fleet.device_dir(rec.id) / "device.yaml").read_text())
        host = args.verify_host or cfg["mqtt"]["host"]
        port = args.verify_port or cfg["mqtt"]["port"]
        dt = wait_refused(host, port, rec.id, cfg["mqtt"]["password"], timeout=5.0)
        if dt is None:
            _out(f"WARNING: {host}:{port} still accepts {rec.id}'s credentials after 5 s")
            return 1
        _out(f"verified: {host}:{port} refuses {rec.id} {time.monotonic() - t0:.3f} s after the revoke started")
    return 0


# --------------------------------------------------------------------------------------------- broker


def cmd_broker_config(args) -> int:
    fleet = Fleet(args.fleet_dir).require()
    etc = Path(args.etc_dir) if args.etc_dir else fleet.root.resolve()
    tls = ""
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if not cert and (fleet.root / "ca" / "broker.crt").exists():
        cert, key, ca = str(etc / "ca/broker.crt"), str(etc / "ca/broker.key"), str(etc / "ca/ca.crt")
    if cert:
        tls = f"certfile {cert}\nkeyfile {key}\n" + (f"cafile {ca}\n" if ca else "")
        tls += "tls_version tlsv1.2\n"
        if args.require_client_cert:
            tls += "require_certificate true\n"
    settings = fleet.settings()
    if settings.broker.tls and not cert:
        tls = ("# WARNING: fleet.yaml says devices connect with TLS, but no certificate was given:\n"
               "# add certfile/keyfile here (or use init --with-ca, or --tls-cert/--tls-key).\n")
        print("warning: devices expect TLS but no --tls-cert/--tls-key (or fleet CA) was given", file=sys.stderr)
    port = args.port or settings.broker.port
    conf = render("mosquitto.conf", pid_file=args.pid_file, port=port, bind=args.bind, local_port=args.local_port,
                  tls_conf=tls, persistence_dir=args.persistence_dir,
                  auth_conf=render_auth_conf(fleet.root, str(etc / "passwd"), str(etc / "acl")))
    with fleet.locked():
        if args.pid_file != settings.broker.pid_file:
            settings.broker.pid_file = args.pid_file
            fleet.save_settings(settings)
        fleet.write_acl()
        if not fleet.passwd_path.exists():
            write_passwd(fleet.passwd_path, {})
        atomic_write(fleet.root / "mosquitto.conf", conf, 0o644)
    active = sum(1 for d in fleet.devices() if d.revoked_at is None)
    _out(f"wrote {fleet.root / 'mosquitto.conf'}, {fleet.acl_path} and {fleet.passwd_path} "
         f"({active} active devices + {SERVER_USER})")
    return 0


# --------------------------------------------------------------------------------------------- boot files


def cmd_boot_files(args) -> int:
    fleet = Fleet(args.fleet_dir).require()
    rec = fleet.get(args.device)
    if rec.revoked_at:
        raise ProvisionError(f"{rec.id} is revoked")
    settings = fleet.settings()
    out = Path(args.dir)
    sc = out / "scanemon"
    sc.mkdir(parents=True, exist_ok=True)
    ddir = fleet.device_dir(rec.id)
    hostname = args.hostname or f"scanemon-{rec.id}"[:63]
    values = dict(device_id=rec.id, name=rec.name, venv=args.venv, bundle_root=settings.devices.bundle_root,
                  pip_index=args.pip_index, hostname=hostname, timezone=args.timezone)

    if args.redact_secrets:
        (sc / "device.yaml").write_text(device_yaml(rec.id, "", settings, redact=True))
        (sc / "updater.yaml").write_text(updater_yaml(rec.id, "redacted", settings, redact=True))
    else:
        shutil.copyfile(ddir / "device.yaml", sc / "device.yaml")
        shutil.copyfile(ddir / "updater.yaml", sc / "updater.yaml")
    shutil.copyfile(fleet.public_key_path, sc / "fleet_signing.pub")
    if (fleet.root / "ca" / "ca.crt").exists():
        shutil.copyfile(fleet.root / "ca" / "ca.crt", sc / "ca.crt")
    for name in ("install.sh", "scanemon-device.service", "scanemon-updater.service"):
        (sc / name).write_text(render(name, **values))
    os.chmod(sc / "install.sh", 0o755)
    shutil.copyfile(TEMPLATES / "requirements-device.txt", sc / "requirements-device.txt")
    if args.wheelhouse:
        wheels = sorted(Path(args.wheelhouse).glob("*.whl"))
        if not wheels:
            raise ProvisionError(f"no wheels in {args.wheelhouse}")
        (sc / "wheels").mkdir(exist_ok=True)
        for w in wheels:
            shutil.copyfile(w, sc / "wheels" / w.name)

    users_block = ""
    if args.ssh_key:
        keys = [k.strip() for k in Path(args.ssh_key).read_text().splitlines() if k.strip()]
        users_block = ("users:\n  - name: {u}\n    groups: [sudo, video]\n    shell: /bin/bash\n"
                       "    sudo: ALL=(ALL) NOPASSWD:ALL\n    lock_passwd: true\n    ssh_authorized_keys:\n"
                       .format(u=args.admin_user) + "".join(f"      - {k}\n" for k in keys)
                       + "ssh_pwauth: false\nenable_ssh: true")
    (out / "user-data").write_text(render("user-data", users_block=users_block, **values))
    (out / "meta-data").write_text(render("meta-data", **values))
    (out / "firstrun.sh").write_text(render("firstrun.sh", **values))
    os.chmod(out / "firstrun.sh", 0o755)
    if args.wifi_ssid:
        import yaml

        net = {"network": {"version": 2, "wifis": {"wlan0": {
            "dhcp4": True, "regulatory-domain": args.wifi_country, "optional": True,
            "access-points": {args.wifi_ssid: {"password": "<redacted>" if args.redact_secrets
                                               else args.wifi_password or ""}}}}}}
        (out / "network-config").write_text(yaml.safe_dump(net, sort_keys=False))
    if args.patch_cmdline:
        cmdline = out / "cmdline.txt"
        if not cmdline.exists():
            raise ProvisionError(f"--patch-cmdline: {cmdline} not found (is DIR the mounted boot partition?)")
        text = cmdline.read_text().strip()
        if "firstrun.sh" not in text:
            text += (" systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot"
                     " systemd.unit=kernel-command-line.target")
            cmdline.write_text(text + "\n")
    _out(f"boot files for {rec.id} in {out}: user-data, meta-data, firstrun.sh, scanemon/ "
         f"({'secrets redacted' if args.redact_secrets else 'contains credentials: handle like a password'})")
    return 0


def cmd_units(args) -> int:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("scanemon-server.service", "scanemon-ingest@.service", "scanemon-resolver.service"):
        (out / name).write_text(render(name, venv=args.venv, http_port=args.http_port))
    _out(f"wrote server units to {out}")
    return 0


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanemon-provision", description="Scanemon fleet provisioning")
    p.add_argument("--fleet-dir", default=os.environ.get("SCANEMON_FLEET_DIR", "fleet"),
                   help="fleet state directory (default ./fleet or $SCANEMON_FLEET_DIR)")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="create the fleet directory: signing key, settings, server broker account")
    i.add_argument("--broker-host", default="scanemon.local", help="broker host name devices connect to")
    i.add_argument("--broker-port", type=int, help="broker port devices connect to (default 1883, 8883 with --tls)")
    i.add_argument("--tls", action="store_true", help="devices connect with TLS")
    i.add_argument("--server-url", default="http://scanemon.local:8000", help="server URL devices download from")
    i.add_argument("--with-ca", action="store_true", help="also create a CA and a broker certificate (implies TLS use)")
    i.add_argument("--force", action="store_true", help="re-write fleet.yaml of an existing fleet (keys are kept)")
    i.set_defaults(func=cmd_init)

    def db_args(sp):
        sp.add_argument("--database-url", help="register in the server database (default $SCANEMON_DATABASE_URL)")
        sp.add_argument("--no-migrate", action="store_true", help="do not upgrade the database schema first")
        sp.add_argument("--broker-pid", type=int, help="broker pid to SIGHUP (default: fleet.yaml broker.pid_file)")

    d = sub.add_parser("device", help="enrol, list and revoke devices")
    dsub = d.add_subparsers(dest="device_command", required=True)
    a = dsub.add_parser("add", help="enrol one device")
    a.add_argument("name")
    a.add_argument("--id", help="device id (default: the name, slugified)")
    a.add_argument("--collection", help="collection id or name its scans go to")
    a.add_argument("--user", help="owner username on the server")
    db_args(a)
    a.set_defaults(func=cmd_device_add)
    b = dsub.add_parser("bulk", help="enrol devices from a CSV (columns name[,id][,collection][,user])")
    b.add_argument("--csv", required=True)
    b.add_argument("--rotate", action="store_true", help="re-issue credentials of already enrolled ids too")
    db_args(b)
    b.set_defaults(func=cmd_device_bulk)
    ls = dsub.add_parser("list", help="list devices")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_device_list)
    r = dsub.add_parser("revoke", help="remove a device's credentials from the live broker (and its API token)")
    r.add_argument("device_id")
    r.add_argument("--verify", action="store_true", help="connect with the old credentials until refused; print when")
    r.add_argument("--verify-host", help="broker host for --verify (default: from the device config)")
    r.add_argument("--verify-port", type=int, help="broker port for --verify")
    db_args(r)
    r.set_defaults(func=cmd_device_revoke)

    bc = sub.add_parser("broker-config", help="render mosquitto.conf, password file and ACL")
    bc.add_argument("--port", type=int, help="device listener port (default: fleet.yaml broker.port)")
    bc.add_argument("--bind", default="0.0.0.0", help="device listener address")
    bc.add_argument("--local-port", type=int, default=1883, help="loopback listener for the server")
    bc.add_argument("--pid-file", default="/run/mosquitto/mosquitto.pid")
    bc.add_argument("--persistence-dir", default="/var/lib/mosquitto/")
    bc.add_argument("--etc-dir", help="where passwd/acl/ca live on the broker host (default: the fleet dir)")
    bc.add_argument("--tls-cert")
    bc.add_argument("--tls-key")
    bc.add_argument("--tls-ca")
    bc.add_argument("--require-client-cert", action="store_true", help="devices must present a CA-signed certificate")
    bc.set_defaults(func=cmd_broker_config)

    bf = sub.add_parser("boot-files", help="Raspberry Pi OS first-boot files for one device")
    bf.add_argument("dir", help="output folder (e.g. the mounted boot partition, /media/$USER/bootfs)")
    bf.add_argument("--device", required=True, help="device id")
    bf.add_argument("--wheelhouse", help="folder of wheels to copy (offline install); else --pip-index is used")
    bf.add_argument("--pip-index", default="https://pypi.org/simple", help="package index when no wheelhouse")
    bf.add_argument("--venv", default=VENV)
    bf.add_argument("--hostname")
    bf.add_argument("--timezone", default="Etc/UTC")
    bf.add_argument("--ssh-key", help="authorized_keys file for the admin user")
    bf.add_argument("--admin-user", default="scanadmin")
    bf.add_argument("--wifi-ssid")
    bf.add_argument("--wifi-password")
    bf.add_argument("--wifi-country", default="GB")
    bf.add_argument("--patch-cmdline", action="store_true", help="make cmdline.txt run firstrun.sh (no cloud-init)")
    bf.add_argument("--redact-secrets", action="store_true", help="for examples/docs: no real credentials")
    bf.set_defaults(func=cmd_boot_files)

    u = sub.add_parser("units", help="render the server-side systemd units")
    u.add_argument("dir")
    u.add_argument("--venv", default=VENV)
    u.add_argument("--http-port", type=int, default=8000)
    u.set_defaults(func=cmd_units)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from device.configfile import ConfigFileError

    try:
        return int(args.func(args) or 0)
    except (ProvisionError, ConfigFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
