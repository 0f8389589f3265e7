"""provisioning/production/: the compose file, the nginx site and the broker config, checked for real.

* compose.yaml: every ``SCANEMON_*`` variable it (and the server-mqtt.env that ``scanemon-provision init``
  writes) sets is a real ServerSettings field and lands in it; every command is a real ``scanemon-server``
  command; every path the broker config names is mounted; ``docker compose config`` (or v1
  ``docker-compose config``) accepts it, client-side, no engine needed.
* mosquitto/mosquitto.conf: exactly what ``scanemon-provision broker-config`` renders for the compose
  layout; then that file, paths and ports moved to a temp dir, runs in a real Mosquitto with the fleet's own
  CA/broker certificate: TLS + right password connects, wrong/no password is refused, the ACL holds.
* nginx/scanemon.conf: a real nginx (``nginx -t``, then serving) in front of a real ``scanemon-server
  serve``: /healthz over HTTPS, HTTP → HTTPS redirect, HSTS, the body limit equal to the server's.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from device.protocol import Topics
from provisioning.cli import main as provision
from provisioning.fleet import SERVER_USER
from tests.services import MOSQUITTO_DIRS, find_binary, free_port, free_ports, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[1]
PROD = ROOT / "provisioning" / "production"
COMPOSE = PROD / "compose.yaml"
BIN = Path(sys.executable).parent
SCANEMON_IMAGE = "scanemon-server:latest"

# The broker-config call documented in provisioning/production/README.md for the compose layout.
BROKER_CONFIG_ARGS = ["broker-config", "--etc-dir", "/etc/scanemon/fleet", "--pid-file", "/mosquitto/data/mosquitto.pid",
                      "--persistence-dir", "/mosquitto/data/", "--tls-cert", "/etc/scanemon/tls/fullchain.pem",
                      "--tls-key", "/etc/scanemon/tls/privkey.pem"]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:?msg} / ${VAR:-default} / ${VAR}, with a stand-in for variables without a default."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        return arg if op == ":-" else f"<{name}>"

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", sub, value)


def setting_path(var: str) -> list[str]:
    """SCANEMON_MQTT__PORT → ['mqtt', 'port'], failing on any segment that is not a settings field."""
    from pydantic import BaseModel

    from server.config import ServerSettings

    assert var.startswith("SCANEMON_"), var
    model = ServerSettings
    path = var[len("SCANEMON_"):].lower().split("__")
    for i, part in enumerate(path):
        fields = model.model_fields
        assert part in fields, f"{var}: {'.'.join(path[:i + 1])} is not a setting (known: {', '.join(fields)})"
        ann = fields[part].annotation
        if i < len(path) - 1:
            assert isinstance(ann, type) and issubclass(ann, BaseModel), f"{var}: {part} has no nested fields"
            model = ann
    return path


def fleet_init(fdir: Path, *extra: str) -> dict[str, str]:
    """A real fleet folder (scanemon-provision init); returns the server's broker env file as a dict."""
    assert provision(["--fleet-dir", str(fdir), "init", *extra]) == 0
    env = (fdir / "secrets" / "server-mqtt.env").read_text()
    return dict(line.split("=", 1) for line in env.split())


def scanemon_services(doc: dict) -> dict[str, dict]:
    return {n: s for n, s in doc["services"].items() if s.get("image") == SCANEMON_IMAGE}


# --------------------------------------------------------------------------------------------- compose


def test_compose_settings_are_real_and_land(tmp_path, monkeypatch):
    from server.config import ServerSettings

    doc = compose()
    services = scanemon_services(doc)
    assert set(services) == {"migrate", "server", "ingest", "resolver"}
    assert {"db", "mosquitto"} <= set(doc["services"])
    server_env = fleet_init(tmp_path / "fleet")
    for name, svc in services.items():
        assert svc["env_file"] == "./server-mqtt.env", name
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        env.update(server_env)  # env_file: what `scanemon-provision init` wrote
        scanemon = {k: v for k, v in env.items() if k.startswith("SCANEMON_")}
        assert scanemon == env, f"{name}: non-SCANEMON variables {set(env) - set(scanemon)}"
        # pydantic-settings ignores unknown SCANEMON_* variables, so a typo would pass silently: walk them.
        paths = {k: setting_path(k) for k in scanemon}
        for k in list(os.environ):
            if k.startswith("SCANEMON_"):
                monkeypatch.delenv(k)
        for k, v in scanemon.items():
            monkeypatch.setenv(k, v)
        settings = ServerSettings()
        for k, path in paths.items():
            got = settings
            for part in path:
                got = getattr(got, part)
            assert str(got).lower() == scanemon[k].lower(), f"{name}: {k}={scanemon[k]!r} became {got!r}"
    assert services["server"]["environment"]["SCANEMON_HOST"] == "0.0.0.0"  # published via the broker's namespace
    ingest_workers = int(services["ingest"]["environment"]["SCANEMON_INGEST__WORKERS"])
    assert ingest_workers >= 1


def test_compose_commands_are_real_server_commands():
    from server.cli import build_parser

    doc = compose()
    parser = build_parser()
    expected = {"migrate": ("db", "upgrade"), "server": ("serve",), "ingest": ("ingest",), "resolver": ("resolver", "worker")}
    for name, svc in scanemon_services(doc).items():
        cmd = svc["command"]
        assert tuple(cmd[:len(expected[name])]) == expected[name], (name, cmd)
        try:
            parser.parse_args(cmd)
        except SystemExit as exc:
            pytest.fail(f"{name}: `scanemon-server {' '.join(cmd)}` is not a valid command ({exc})")
        # They reach the broker's loopback listener through its network namespace (see compose.yaml).
        assert svc["network_mode"] == "service:mosquitto", name
    # Migrations run once, before the long-running services start.
    for name in ("server", "ingest", "resolver"):
        assert doc["services"][name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "--no-migrate" in doc["services"]["server"]["command"]
    assert doc["services"]["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert doc["services"]["db"]["image"] == "postgres:15"


def test_compose_mounts_every_path_the_broker_config_names():
    doc = compose()
    mosq = doc["services"]["mosquitto"]
    conf_path = mosq["command"][mosq["command"].index("-c") + 1]
    targets = [v.split(":")[1] for v in mosq["volumes"]]
    conf = (PROD / "mosquitto" / "mosquitto.conf").read_text()
    paths = [conf_path] + re.findall(r"^(?:pid_file|password_file|acl_file|certfile|keyfile|persistence_location) (\S+)",
                                     conf, re.M)
    assert len(paths) == 7, paths
    for p in paths:
        assert any(p.startswith(t.rstrip("/") + "/") for t in targets), f"{p} is not under a mounted folder {targets}"
    # The published ports are the ones the config listens on (devices 8883) and the server's HTTP port.
    assert re.search(r"^listener 8883 0\.0\.0\.0$", conf, re.M) and "8883:8883" in mosq["ports"]
    assert "127.0.0.1:8000:8000" in mosq["ports"]
    assert re.search(r"^listener 1883 127\.0\.0\.1$", conf, re.M)
    assert doc["services"]["server"]["environment"]["SCANEMON_MQTT__PORT"] == "1883"


def test_dockerfile_installs_the_pinned_server_extras():
    import tomllib

    text = (PROD / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert f"torch=={pins['torch']} torchvision=={pins['torchvision']}" in text
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extras = re.search(r"-c constraints\.txt '\.\[([\w,]+)\]'", text).group(1).split(",")
    assert extras == ["server", "resolver"] and all(e in groups for e in extras)
    for src in re.findall(r"^COPY (\S+) \S+$", text, re.M):
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    # Settings baked into the image are real fields too.
    baked = re.findall(r"\b(SCANEMON_\w+)=", text)
    assert baked and all(setting_path(v) for v in baked)
    # The editable install is what finds the resolver's default checkpoint (see the Dockerfile comment).
    from server.resolver.embedders import DEFAULT_CHECKPOINT

    assert DEFAULT_CHECKPOINT.relative_to(ROOT).parts[0] == "models" and DEFAULT_CHECKPOINT.exists()


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def test_docker_compose_config_accepts_it(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` found; apt install docker-compose")
    # A copy at the same depth, with the files the README says to put next to it.
    proj = tmp_path / "repo" / "provisioning" / "production"
    proj.mkdir(parents=True)
    shutil.copy(COMPOSE, proj / "compose.yaml")
    for d in ("broker", "tls", "catalog"):
        (proj / d).mkdir()
    server_env = fleet_init(tmp_path / "fleet")
    shutil.copy(tmp_path / "fleet" / "secrets" / "server-mqtt.env", proj / "server-mqtt.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANEMON_", "POSTGRES_", "COMPOSE_"))}

    def config(**extra) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, "-f", "compose.yaml", "config"], cwd=proj, env={**env, **extra},
                              capture_output=True, text=True, timeout=60)

    missing = config()
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr, missing.stderr
    res = config(POSTGRES_PASSWORD="s3cret")
    assert res.returncode == 0, res.stderr
    out = yaml.safe_load(res.stdout)
    srv = out["services"]["server"]
    assert srv["environment"]["SCANEMON_DATABASE_URL"] == "postgresql+psycopg2://scanemon:s3cret@db:5432/scanemon"
    # The env_file's credentials reach the server's environment.
    assert srv["environment"]["SCANEMON_MQTT__PASSWORD"] == server_env["SCANEMON_MQTT__PASSWORD"]
    assert Path(srv["build"]["context"]).resolve() == (tmp_path / "repo").resolve()


# --------------------------------------------------------------------------------------------- mosquitto


def test_mosquitto_conf_is_what_broker_config_renders(tmp_path):
    fdir = tmp_path / "fleet"
    fleet_init(fdir, "--broker-host", "mqtt.scanemon.example", "--tls", "--server-url", "https://scanemon.example")
    assert provision(["--fleet-dir", str(fdir), *BROKER_CONFIG_ARGS]) == 0
    committed = (PROD / "mosquitto" / "mosquitto.conf").read_text()
    assert (fdir / "mosquitto.conf").read_text() == committed, (
        "provisioning/production/mosquitto/mosquitto.conf is stale: re-render it with "
        f"scanemon-provision {' '.join(BROKER_CONFIG_ARGS)}")
    assert "allow_anonymous false" in committed and "require_certificate" not in committed


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the production mosquitto.conf"
    return text.replace(old, new)


@pytest.fixture
def production_broker(tmp_path):
    """The committed production mosquitto.conf, paths and ports moved into tmp_path, on a real Mosquitto."""
    import pwd

    binary = find_binary("mosquitto", MOSQUITTO_DIRS)
    if not binary:
        pytest.skip("mosquitto binary not found (apt install mosquitto)")
    fdir = tmp_path / "fleet"
    server_env = fleet_init(fdir, "--broker-host", "127.0.0.1", "--tls", "--with-ca")
    for dev in ("counter-01", "counter-02"):
        assert provision(["--fleet-dir", str(fdir), "device", "add", dev]) == 0
    # broker-config writes passwd/acl for the fleet; its mosquitto.conf is the committed one (test above).
    assert provision(["--fleet-dir", str(fdir), *BROKER_CONFIG_ARGS]) == 0
    data = tmp_path / "data"
    data.mkdir()
    tls_port, local_port = free_ports(2)
    conf = (PROD / "mosquitto" / "mosquitto.conf").read_text()
    conf = _replace_once(conf, "/etc/scanemon/fleet/passwd", str(fdir / "passwd"))
    conf = _replace_once(conf, "/etc/scanemon/fleet/acl", str(fdir / "acl"))
    conf = _replace_once(conf, "/etc/scanemon/tls/fullchain.pem", str(fdir / "ca" / "broker.crt"))
    conf = _replace_once(conf, "/etc/scanemon/tls/privkey.pem", str(fdir / "ca" / "broker.key"))
    conf = conf.replace("/mosquitto/data/", f"{data}/")
    conf = _replace_once(conf, "listener 8883 0.0.0.0", f"listener {tls_port} 127.0.0.1")
    conf = _replace_once(conf, "listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1")
    conf = _replace_once(conf, "log_dest syslog", f"log_dest file {tmp_path / 'mosquitto.log'}")
    # As root, mosquitto would drop to user 'mosquitto' and lose access to pytest's root-only temp dir.
    conf = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" + conf
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr.log", "wb"), start_new_session=True)
    try:
        try:
            wait_port(tls_port)
            wait_port(local_port)
        except TimeoutError:
            log = (tmp_path / "stderr.log").read_text() + (tmp_path / "mosquitto.log").read_text(errors="replace")
            pytest.fail(f"mosquitto did not start with the production config:\n{log}")
        creds = {"server": (SERVER_USER, server_env["SCANEMON_MQTT__PASSWORD"])}
        for dev in ("counter-01", "counter-02"):
            cfg = yaml.safe_load((fdir / "devices" / dev / "device.yaml").read_text())
            assert cfg["mqtt"]["tls"] is True and cfg["mqtt"]["port"] == 8883  # what devices are told to use
            creds[dev] = (cfg["mqtt"]["username"], cfg["mqtt"]["password"])
        yield {"tls_port": tls_port, "local_port": local_port, "ca": str(fdir / "ca" / "ca.crt"), "creds": creds,
               "dir": tmp_path}
    finally:
        proc.kill()
        proc.wait(10)


def _client(broker: dict, who: str | None, password: str | None = None, tls: bool = True):
    from tests.test_acl import Client

    user, pw = broker["creds"].get(who, (who, None)) if who else (None, None)
    c = Client(broker["tls_port"] if tls else broker["local_port"], user, password if password is not None else pw)
    if tls:
        c.c.tls_set(ca_certs=broker["ca"])  # the fleet CA; the broker certificate names 127.0.0.1
    return c


@pytest.mark.mosquitto
def test_production_broker_tls_passwords_and_acl(production_broker):
    b = production_broker
    clients = []

    def connect(*args, **kw):
        c = _client(b, *args, **kw)
        clients.append(c)
        return c.connect()

    try:
        good = connect("counter-01")
        assert good.ok, f"TLS + right password refused: {good.rc}"
        wrong = connect("counter-01", password="not-the-password")
        assert not wrong.ok and "authori" in str(wrong.rc).lower(), wrong.rc
        anonymous = connect(None)
        assert not anonymous.ok, "anonymous client accepted"
        # The server account on the loopback listener (plain MQTT, as compose's server containers use it).
        server = connect("server", tls=False)
        assert server.ok, server.rc
        assert server.subscribe(Topics.shared_scans())[0].value < 0x80
        # ACL: another device's topics can be neither read nor written; a device cannot ack its own scans.
        # (Mosquitto 2.0 may grant a denied SUBACK and then never deliver: check delivery, not the code.)
        good.subscribe(Topics.acks("counter-02"))
        other = connect("counter-02")
        assert other.subscribe(Topics.acks("counter-02"))[0].value < 0x80
        watcher = connect("server", tls=False)
        assert watcher.subscribe(Topics.acks("counter-01"))[0].value < 0x80
        server.publish(Topics.acks("counter-02"), b"ack-for-02")
        assert other.wait_for(b"ack-for-02")  # control: the owner gets its ack over TLS
        connect("counter-01").forge(Topics.scans("counter-02"), b"spoofed-scan")
        connect("counter-01").forge(Topics.acks("counter-01"), b"self-ack")
        other.publish(Topics.scans("counter-02"), b"control")  # arrives after the forged ones would have
        assert server.wait_for(b"control")
        time.sleep(1.0)
        assert not good.got(b"ack-for-02"), "counter-01 read counter-02's acks"
        assert not server.got(b"spoofed-scan") and not watcher.got(b"self-ack")
    finally:
        for c in clients:
            c.close()


@pytest.mark.mosquitto
def test_compose_broker_healthcheck_command_works(production_broker):
    """compose.yaml's mosquitto healthcheck, run against the live broker: healthy when up, not when down."""
    if not shutil.which("mosquitto_sub"):
        pytest.skip("mosquitto_sub not found (apt install mosquitto-clients)")
    test = compose()["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    cmd = test[1].replace("$$", "$")
    up = cmd.replace("-p 1883", f"-p {production_broker['local_port']}")
    down = cmd.replace("-p 1883", f"-p {free_port()}")
    assert up != cmd
    assert subprocess.run(["sh", "-c", up], timeout=20).returncode == 0
    assert subprocess.run(["sh", "-c", down], timeout=20).returncode != 0


# --------------------------------------------------------------------------------------------- nginx


def self_signed(dir_: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, k = dir_ / "cert.pem", dir_ / "key.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return crt, k


SITE = PROD / "nginx" / "scanemon.conf"


def nginx_site_for_test(tmp_path: Path, http_port: int, https_port: int, upstream_port: int) -> Path:
    """The committed site with certificate paths, ports and the upstream moved to test values."""
    crt, key = self_signed(tmp_path)
    site = SITE.read_text()
    for old, new in [("listen 80;", f"listen 127.0.0.1:{http_port};"), ("listen [::]:80;", ""),
                     ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
                     ("listen [::]:443 ssl http2;", ""),
                     ("/etc/letsencrypt/live/scanemon.example/fullchain.pem", str(crt)),
                     ("/etc/letsencrypt/live/scanemon.example/privkey.pem", str(key)),
                     ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
                     ("root /var/www/html;", f"root {tmp_path};")]:
        site = _replace_once(site, old, new)
    (tmp_path / "site.conf").write_text(site)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    main = f"""
user root;
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/site.conf;
}}
"""
    (tmp_path / "nginx.conf").write_text(main)
    return tmp_path / "nginx.conf"


def _nginx() -> str:
    binary = find_binary("nginx", ("/usr/sbin",))
    if not binary:
        pytest.skip("nginx not found (apt install nginx-light)")
    return binary


def test_nginx_body_limit_matches_server_setting():
    from server.config import ServerSettings

    m = re.search(r"^\s*client_max_body_size (\d+)m;", SITE.read_text(), re.M)
    assert m, "no client_max_body_size in the nginx site"
    assert int(m.group(1)) * 1024 * 1024 == ServerSettings.model_fields["security"].default_factory().max_body_bytes


def test_nginx_config_is_valid(tmp_path):
    nginx = _nginx()
    conf = nginx_site_for_test(tmp_path, *free_ports(3))
    res = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _request(port: int, method: str, path: str, *, tls: bool, ca: Path | None = None, body: bytes | None = None):
    if tls:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_nginx_proxies_https_to_a_real_server(tmp_path):
    nginx = _nginx()
    http_port, https_port, app_port = free_ports(3)
    conf = nginx_site_for_test(tmp_path, http_port, https_port, app_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANEMON_")}
    env.update(SCANEMON_DATA_DIR=str(tmp_path / "data"), SCANEMON_READYZ_CHECK_BROKER="false")
    server = subprocess.Popen([str(BIN / "scanemon-server"), "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}",
                               "serve", "--port", str(app_port)], env=env, cwd=tmp_path,
                              stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    proxy = None
    try:
        try:
            wait_port(app_port, timeout=90)
        except TimeoutError:
            pytest.fail(f"scanemon-server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "nginx.stderr", "wb"), start_new_session=True)
        try:
            wait_port(https_port)
            wait_port(http_port)
        except TimeoutError:
            pytest.fail(f"nginx did not start: {(tmp_path / 'nginx.stderr').read_text()}"
                        f"{(tmp_path / 'error.log').read_text() if (tmp_path / 'error.log').exists() else ''}")
        ca = tmp_path / "cert.pem"
        status, headers, body = _request(https_port, "GET", "/healthz", tls=True, ca=ca)
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["x-content-type-options"] == "nosniff"  # set by the server: the answer came through
        status, headers, _ = _request(https_port, "GET", "/readyz", tls=True, ca=ca)
        assert status == 200, "readyz through the proxy"
        # Plain HTTP only redirects.
        status, headers, _ = _request(http_port, "GET", "/api/v1/cards?q=pikachu", tls=False)
        assert status == 301 and headers["location"] == "https://127.0.0.1/api/v1/cards?q=pikachu"
        # Body limit: just under the server's limit is forwarded (the server answers 405 for POST /healthz),
        # just over it is refused by nginx itself.
        limit = 16 * 1024 * 1024
        status, headers, _ = _request(https_port, "POST", "/healthz", tls=True, ca=ca, body=b"x" * (limit - 4096))
        assert status == 405, status
        status, headers, body = _request(https_port, "POST", "/healthz", tls=True, ca=ca, body=b"x" * (limit + 4096))
        assert status == 413 and b"nginx" in body, (status, body[:200])
    finally:
        for p in (proxy, server):
            stop_process(p)
