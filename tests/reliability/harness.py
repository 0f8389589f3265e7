"""Processes and checks for the reliability suite: simulated devices, ingest workers, a TCP proxy that can
blackhole, and the exactly-once verdict read from the database.

Every device/ingest here is a real OS process (``python -m device.relay_sim`` / ``python -m server ingest``)
so the tests can SIGKILL them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from sqlalchemy import func, select

from server.db.models import CollectionItem, DeadLetter, Scan
from server.db.session import Database

ROOT = Path(__file__).resolve().parents[2]
#: Outboxes live on tmpfs: the suite kills processes, not power, and a process kill cannot lose a
#: committed SQLite WAL transaction whatever the fsync cost. On disk this machine manages ~150 fsyncs/s.
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None

RESULTS: list["Verdict"] = []


@dataclass
class Verdict:
    test: str
    scans: int  # expected (recorded on the device)
    stored: int  # distinct scans in the database
    lost: int
    duplicated: int
    dead_lettered: int
    seconds: float = 0.0
    extra: dict | None = None

    def line(self) -> str:
        return f"scans={self.scans} lost={self.lost} duplicated={self.duplicated} dead_lettered={self.dead_lettered}"


def summary_line(results: list[Verdict]) -> str:
    return (f"scans={sum(r.scans for r in results)} lost={sum(r.lost for r in results)} "
            f"duplicated={sum(r.duplicated for r in results)} dead_lettered={sum(r.dead_lettered for r in results)}")


def verify(db: Database, device_id: str, expected: int, *, accepted_every: tuple[int, int] | None = None) -> Verdict:
    """Exactly-once check: seqs 1..expected each present once, no extra rows, collection counted once."""
    with db.session() as s:
        rows = s.execute(select(Scan.seq, Scan.scan_id, Scan.applied, Scan.decision)
                         .where(Scan.device_id == device_id)).all()
        dead = s.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.device_id == device_id))
        applied_rows = sum(1 for r in rows if r.applied)
        coll_qty = s.scalar(select(func.coalesce(func.sum(CollectionItem.quantity), 0))) or 0
    seqs = [r.seq for r in rows]
    distinct = set(seqs)
    want = set(range(1, expected + 1))
    lost = len(want - distinct)
    # Two rows for one seq (a device that reused a number after a crash) or one scan twice both count.
    duplicated = len(seqs) - len(distinct) + len(distinct - want)
    return Verdict(test="", scans=expected, stored=len(distinct & want), lost=lost, duplicated=duplicated,
                   dead_lettered=dead, extra={"applied": applied_rows, "collection_quantity": int(coll_qty)})


def wait_for(cond, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def count_scans(db: Database, device_id: str | None = None) -> int:
    with db.session() as s:
        q = select(func.count(func.distinct(Scan.scan_id))).select_from(Scan)
        if device_id:
            q = q.where(Scan.device_id == device_id)
        return s.scalar(q)


class DeviceProc:
    """``python -m device.relay_sim`` with its own YAML config; restartable with the same outbox."""

    def __init__(self, workdir: Path, device_id: str, port: int, *, scans: int, rate: float, burst: int = 1,
                 keepalive: int = 2, ack_timeout_s: float = 3.0, batch_max: int = 50, inflight_window: int = 500,
                 extra_args: tuple[str, ...] = (), outbox_dir: Path | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.scans, self.rate, self.burst, self.extra_args = scans, rate, burst, extra_args
        odir = outbox_dir or (SHM / f"scanemon-{os.getpid()}-{device_id}-{int(time.time() * 1000)}" if SHM else workdir)
        odir.mkdir(parents=True, exist_ok=True)
        self.outbox_path = odir / "outbox.db"
        self.config = self.dir / f"{device_id}.yaml"
        self.config.write_text(yaml.safe_dump({
            "device_id": device_id, "bundle_version": "rel-1",
            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": keepalive, "reconnect_min_s": 0.05,
                     "reconnect_max_s": 1.0, "connect_timeout_s": 2.0},
            "outbox": {"path": str(self.outbox_path), "budget_bytes": 512 * 1024 * 1024},
            "relay": {"batch_max": batch_max, "batch_wait_ms": 10, "inflight_window": inflight_window,
                      "ack_timeout_s": ack_timeout_s, "telemetry_interval_s": 1.0},
        }))
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.reports: list[dict] = []

    def start(self, *, relay: bool = True) -> "DeviceProc":
        args = [sys.executable, "-m", "device.relay_sim", "--config", str(self.config), "--scans", str(self.scans),
                "--rate", str(self.rate), "--burst", str(self.burst), "--exit-when-drained",
                "--ambiguous-every", "10", "--no-card-every", "7", *self.extra_args]
        if not relay:
            args.append("--no-relay")
        self.runs += 1
        self.log = open(self.dir / f"{self.device_id}.run{self.runs}.log", "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wait(self, timeout: float) -> dict:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        lines = out.decode().strip().splitlines()
        report = json.loads(lines[-1]) if lines else {}
        report["rc"] = self.proc.returncode
        self.reports.append(report)
        return report

    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def last_seq(self) -> int:
        import sqlite3

        if not self.outbox_path.exists():
            return 0
        con = sqlite3.connect(self.outbox_path, timeout=10)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
            return int(row[0]) if row else 0
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    def depth(self) -> int:
        import sqlite3

        con = sqlite3.connect(self.outbox_path, timeout=10)
        try:
            return con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            con.close()

    def cleanup(self) -> None:
        self.kill()
        if SHM and str(self.outbox_path).startswith(str(SHM)):
            for p in self.outbox_path.parent.glob("*"):
                p.unlink(missing_ok=True)
            self.outbox_path.parent.rmdir()


class IngestProc:
    """``python -m server ingest --worker-index K`` against the test broker and database."""

    def __init__(self, workdir: Path, db_url: str, port: int, index: int = 0, env: dict[str, str] | None = None):
        self.dir, self.db_url, self.port, self.index = workdir, db_url, port, index
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self, **extra_env: str) -> "IngestProc":
        env = {**os.environ, "SCANEMON_DATABASE_URL": self.db_url, "SCANEMON_MQTT__PORT": str(self.port),
               "SCANEMON_MQTT__CLIENT_ID": "rel", "SCANEMON_MQTT__KEEPALIVE": "5",
               "SCANEMON_INGEST__BATCH_WAIT_MS": "10", **self.env, **extra_env}
        self.runs += 1
        self.log_path = self.dir / f"ingest{self.index}.run{self.runs}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "ingest", "--worker-index", str(self.index),
                                      "--no-migrate"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def wait_subscribed(self, timeout: float = 30.0) -> "IngestProc":
        """Until the worker logged its subscription (messages published before that have no subscriber)."""
        wait_for(lambda: self.log_path.exists() and "subscribed to" in self.log_path.read_text(errors="replace"),
                 timeout, what=f"ingest worker {self.index} to subscribe")
        return self

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class TcpProxy:
    """A TCP relay between device and broker that can *blackhole*: stop forwarding in both directions
    without closing anything (what a dead Wi-Fi link or a dropped route looks like), then heal."""

    def __init__(self, upstream_port: int, listen_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = listen_port
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._server = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tcp-proxy")
        self.connections = 0

    def start(self) -> "TcpProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self):
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # bytes read just before a blackhole wait for the heal
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, c_reader, c_writer):
        self.connections += 1
        try:
            await self._flowing.wait()
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(self._pipe(c_reader, u_writer), self._pipe(u_reader, c_writer))

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        async def _close():
            self._server.close()
        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def record(test_name: str, v: Verdict, seconds: float, **extra) -> Verdict:
    v.test, v.seconds = test_name, round(seconds, 1)
    v.extra = {**(v.extra or {}), **extra}
    RESULTS.append(v)
    print(f"[reliability] {test_name}: {v.line()} stored={v.stored} {json.dumps(v.extra)} ({v.seconds}s)")
    return v


def as_json(results: list[Verdict]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
