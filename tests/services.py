"""Real Mosquitto and PostgreSQL instances for tests and benchmarks: own process, random port, temp dir.

Nothing here mocks a broker or a database; tests get the real binaries, can give them their own
password files and ACLs, and can kill them on purpose.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen (``free_port`` called n times
    may hand out a just-closed port twice, e.g. the proxy's TLS port and its backend's)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM (a clean shutdown, as systemd would), then SIGKILL if it is still there after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def find_binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        p = Path(d) / name
        if p.exists():
            return str(p)
    return None


MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin")


class Mosquitto:
    """A private Mosquitto 2 broker. ``passwords`` maps user → password; ``acl`` is ACL-file text."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 passwords: dict[str, str] | None = None, acl: str | None = None,
                 persistence: bool = True, extra_conf: str = ""):
        self.binary = find_binary("mosquitto", MOSQUITTO_DIRS)
        if not self.binary:
            raise FileNotFoundError("mosquitto binary not found (apt install mosquitto)")
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="scanemon-mosq-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.passwords = passwords
        self.acl = acl
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.write_config()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def write_config(self) -> None:
        lines = [
            # Started as root, mosquitto would drop to user 'mosquitto' and lose access to our temp dir.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.passwords is not None else 'true'}",
            # Big queues: the reliability suite parks 10,000 scans for an offline ingest worker.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "persistent_client_expiration 1d",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type error", "log_type warning", "log_type notice",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        if self.passwords is not None:
            pw = self.dir / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
            pw.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if self.acl is not None:
            acl = self.dir / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        if self.extra_conf:
            lines.append(self.extra_conf)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> "Mosquitto":
        if self.proc and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "ab"), start_new_session=True)
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            raise RuntimeError(f"mosquitto did not start: {self.log_tail()}")
        return self

    def reload(self) -> None:
        """SIGHUP: re-read password and ACL files (how a revocation reaches a live broker)."""
        self.write_config()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        out = []
        for f in ("mosquitto.log", "stderr.log"):
            p = self.dir / f
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


PG_DIRS = tuple(sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)) if Path("/usr/lib/postgresql").exists() else ()


class Postgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a random port; ``url(db)`` for SQLAlchemy.

    PostgreSQL refuses to run as root, so when we are root the cluster belongs to the ``postgres``
    system user (created by Debian's package).
    """

    def __init__(self, workdir: Path | None = None, *, port: int | None = None):
        self.initdb = find_binary("initdb", PG_DIRS)
        self.pg_ctl = find_binary("pg_ctl", PG_DIRS)
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found (apt install postgresql)")
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="scanemon-pg-"))
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError if the system user is missing
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o755)

    def _run(self, *cmd: str) -> None:
        res = subprocess.run([*self._as, *cmd], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stdout}\n{res.stderr}")

    def start(self) -> "Postgres":
        if not self.data.exists():
            self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        # fsync off: test clusters trade crash safety for speed; the tests kill brokers and devices, not PG.
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            subprocess.run([*self._as, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"], capture_output=True)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg2

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
