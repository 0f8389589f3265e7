"""The device outbox: every scan is committed here (SQLite, WAL, synchronous=FULL) before it is published.

Life of a row::

    record() ──► pending ──claim()──► sent ──ack()──► acked (= row deleted)
                    ▲                   │
                    └── requeue() ──────┘   (reconnect, ack timeout, relay restart)

* ``seq`` is per device, strictly increasing and persisted in the same transaction as the row, so a
  crash can never reuse a number or leave a hole.
* A row leaves only when the server's application-level ``Ack`` arrives (sent after its database
  commit). A broker PUBACK proves nothing about the database and is ignored here.
* Durability: ``record()`` commits with synchronous=FULL (fsync: survives a power cut). Claim, requeue
  and ack commit with NORMAL: losing one of those only causes a resend that the server dedupes, and
  it saves an fsync per batch (an SD card manages ~100-200 fsyncs/s; this dev box ~150/s).
* Capacity is a byte budget. Crossing ``high_water`` warns (log, ``high_water`` flag, telemetry);
  at the budget ``record()`` raises ``OutboxFull`` (``refuse``) or waits for acks first (``block``).
  Nothing is ever dropped silently.

Several processes may open the same file (the appliance loop records, the relay publishes): every
write is one ``BEGIN IMMEDIATE`` transaction and readers never block writers under WAL.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from device.protocol import Decision, Scan, encode, uuid7

log = logging.getLogger(__name__)

#: Bytes charged per row on top of the payload (row header, index entries, scan_id): keeps the budget honest
#: for tiny scans.
ROW_OVERHEAD = 128

PENDING, SENT = "pending", "sent"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    scan_id    TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL,
    size       INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent')),
    created_at REAL NOT NULL,
    sent_at    REAL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_outbox_state_seq ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0), ('bytes', 0), ('acked_total', 0),
    ('last_ack_at', NULL), ('device_id', NULL);
"""


class OutboxError(RuntimeError):
    pass


class OutboxFull(OutboxError):
    """The outbox reached its disk budget: the scan was NOT recorded. Show it; scanning must pause."""

    def __init__(self, used: int, budget: int, needed: int):
        super().__init__(f"outbox full: {used} of {budget} bytes used, scan needs {needed}; "
                         "waiting for the server to acknowledge (check the network)")
        self.used, self.budget, self.needed = used, budget, needed


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    scan_id: str
    payload: bytes  # the Scan as compact JSON (protocol.encode)
    created_at: float
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    pending: int
    sent: int
    bytes: int
    budget: int
    last_seq: int
    acked_total: int
    last_ack_at: float | None

    @property
    def fill(self) -> float:
        return self.bytes / self.budget if self.budget else 0.0


class Outbox:
    """Durable queue of scans for one device. Thread-safe; one SQLite connection per instance."""

    def __init__(self, path: str | Path, device_id: str, *, budget_bytes: int = 256 * 1024 * 1024,
                 high_water: float = 0.8, full_policy: Literal["refuse", "block"] = "refuse",
                 block_timeout_s: float = 30.0):
        self.path = Path(path)
        self.device_id = device_id
        self.budget_bytes = budget_bytes
        self.high_water_fraction = high_water
        self.full_policy = full_policy
        self.block_timeout_s = block_timeout_s
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._warned = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so every write is one explicit transaction.
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OutboxError(f"{self.path}: could not enable WAL (journal_mode={mode})")
        # FULL: a scan reported as recorded survives a power cut, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        with self._tx():
            for stmt in filter(str.strip, SCHEMA.split(";")):
                self._db.execute(stmt)
            owner = self._meta("device_id")
            if owner is None:
                self._set_meta("device_id", device_id)
            elif owner != device_id:
                # Seqs belong to a device; mixing two devices in one file would corrupt both streams.
                raise OutboxError(f"{self.path} belongs to device {owner!r}, not {device_id!r}")

    @classmethod
    def from_config(cls, config) -> "Outbox":
        """``Outbox`` from a ``device.config.DeviceConfig``."""
        o = config.outbox
        return cls(o.path, config.device_id, budget_bytes=o.budget_bytes, high_water=o.high_water,
                   full_policy=o.full_policy, block_timeout_s=o.block_timeout_s)

    # -- plumbing ---------------------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, outbox: "Outbox", durable: bool):
            self.o, self.durable = outbox, durable

        def __enter__(self):
            self.o._lock.acquire()
            try:
                # Only recording a scan must survive a power cut (FULL: fsync per commit). Claim/requeue/ack
                # commit under NORMAL: losing one of those to a power cut merely causes a resend, which the
                # server dedupes, and it saves an fsync per published batch and per ack.
                self.o._db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
                self.o._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.o._lock.release()
                raise
            return self.o._db

        def __exit__(self, exc_type, *_):
            try:
                self.o._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                if not self.durable:
                    self.o._db.execute("PRAGMA synchronous=FULL")
                self.o._lock.release()

    def _tx(self, durable: bool = True) -> "_Tx":
        return Outbox._Tx(self, durable)

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def pragma(self, name: str) -> Any:
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- recording --------------------------------------------------------------------------------------------
    def record(self, decision: Decision | str, *, card_id: str | None = None, score: float = 0.0,
               margin: float = 0.0, candidates: Sequence[Any] = (), quad=None, crop: bytes | None = None,
               bundle_version: str = "", captured_at: datetime | None = None,
               quality_flag: str | None = None, crop_margin: float = 0.0,
               device_confidence: float | None = None) -> Scan:
        """Commit one scan (new scan_id and next seq) and return it. Raises ``OutboxFull`` at the budget."""
        fields = dict(device_id=self.device_id, captured_at=captured_at or datetime.now(timezone.utc),
                      decision=decision, card_id=card_id, score=score, margin=margin,
                      candidates=list(candidates), quad=quad, crop=crop, crop_margin=crop_margin,
                      bundle_version=bundle_version, quality_flag=quality_flag,
                      device_confidence=device_confidence)
        return self.record_many([fields])[0]

    def record_many(self, scans: Iterable[dict[str, Any]]) -> list[Scan]:
        """Commit several scans in one transaction (all or none). Each dict holds ``Scan`` fields minus
        scan_id/seq/device_id (``captured_at`` defaults to now)."""
        items = list(scans)
        deadline = time.monotonic() + (self.block_timeout_s if self.full_policy == "block" else 0)
        with self._space:
            while True:
                try:
                    return self._record_many(items)
                except OutboxFull:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    # Another process may ack, so poll as well as waiting for our own acks.
                    self._space.wait(min(left, 0.5))

    def _record_many(self, items: list[dict[str, Any]]) -> list[Scan]:
        now = time.time()
        captured = datetime.now(timezone.utc)
        out: list[Scan] = []
        with self._tx() as db:
            seq = int(self._meta("last_seq"))
            used = int(self._meta("bytes"))
            rows = []
            for fields in items:
                seq += 1
                scan = Scan(scan_id=uuid7(), seq=seq,
                            **{"captured_at": captured, **fields, "device_id": self.device_id})
                payload = encode(scan)
                size = len(payload) + ROW_OVERHEAD
                if used + size > self.budget_bytes:
                    raise OutboxFull(used, self.budget_bytes, size)  # rolls back the whole call
                used += size
                rows.append((seq, scan.scan_id, payload, size, now))
                out.append(scan)
            db.executemany("INSERT INTO outbox (seq, scan_id, payload, size, created_at) VALUES (?, ?, ?, ?, ?)", rows)
            self._set_meta("last_seq", seq)
            self._set_meta("bytes", used)
        self._check_high_water(used)
        return out

    def _check_high_water(self, used: int) -> None:
        above = used >= self.high_water_fraction * self.budget_bytes
        if above and not self._warned:
            log.warning("outbox %s above high-water mark: %d of %d bytes (%.0f%%); the server is not keeping up "
                        "or the network is down", self.path, used, self.budget_bytes, 100 * used / self.budget_bytes)
        elif not above and self._warned:
            log.info("outbox %s back under the high-water mark (%d bytes)", self.path, used)
        self._warned = above

    @property
    def high_water(self) -> bool:
        """True while the outbox is above its high-water mark (the UI and telemetry show it)."""
        s = self.stats()
        return s.bytes >= self.high_water_fraction * self.budget_bytes

    # -- relay side -------------------------------------------------------------------------------------------
    def claim(self, limit: int, *, max_bytes: int | None = None, linger_s: float = 0.0) -> list[OutboxRow]:
        """Mark up to ``limit`` pending rows (oldest first) as sent and return them.

        ``max_bytes`` caps the summed payload size (one row is always returned so a large scan still goes).
        With ``linger_s`` a partial batch is held back until its oldest scan has waited that long.
        """
        now = time.time()
        with self._tx(durable=False) as db:
            rows = db.execute("SELECT seq, scan_id, payload, created_at, attempts FROM outbox "
                              "WHERE state = 'pending' ORDER BY seq LIMIT ?", (limit,)).fetchall()
            if not rows or (linger_s > 0 and len(rows) < limit and now - rows[0][3] < linger_s):
                return []
            picked: list[OutboxRow] = []
            total = 0
            for seq, scan_id, payload, created_at, attempts in rows:
                if max_bytes is not None and picked and total + len(payload) > max_bytes:
                    break
                total += len(payload)
                picked.append(OutboxRow(seq, scan_id, bytes(payload), created_at, attempts + 1))
            db.executemany("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1 WHERE seq = ?",
                           [(now, r.seq) for r in picked])
        return picked

    def requeue(self, scan_ids: Iterable[str] | None = None) -> int:
        """Put sent rows back to pending (all of them when ``scan_ids`` is None): they will be published again."""
        with self._tx(durable=False) as db:
            if scan_ids is None:
                return db.execute("UPDATE outbox SET state = 'pending' WHERE state = 'sent'").rowcount
            return db.executemany("UPDATE outbox SET state = 'pending' WHERE scan_id = ? AND state = 'sent'",
                                  [(s,) for s in scan_ids]).rowcount

    def ack(self, scan_ids: Iterable[str]) -> int:
        """The server committed these scans: delete them (whatever their state). Unknown ids are ignored
        (acks of duplicates we already dropped). Returns how many rows were removed."""
        ids = [(s,) for s in scan_ids]
        if not ids:
            return 0
        with self._space:
            with self._tx(durable=False) as db:
                freed = 0
                removed = 0
                # Chunked IN lists: sum the sizes we are about to free, then delete.
                for i in range(0, len(ids), 500):
                    chunk = [x[0] for x in ids[i:i + 500]]
                    marks = ",".join("?" * len(chunk))
                    freed += db.execute(f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE scan_id IN ({marks})",
                                        chunk).fetchone()[0]
                    removed += db.execute(f"DELETE FROM outbox WHERE scan_id IN ({marks})", chunk).rowcount
                if removed:
                    used = max(0, int(self._meta("bytes")) - freed)
                    self._set_meta("bytes", used)
                    self._set_meta("acked_total", int(self._meta("acked_total")) + removed)
                    self._set_meta("last_ack_at", time.time())
            if removed:
                self._space.notify_all()
                self._check_high_water(used)
        return removed

    # -- inspection -------------------------------------------------------------------------------------------
    def stats(self) -> OutboxStats:
        with self._lock:
            db = self._db
            pending, sent = 0, 0
            for state, n in db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                if state == PENDING:
                    pending = n
                elif state == SENT:
                    sent = n
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return OutboxStats(depth=pending + sent, pending=pending, sent=sent, bytes=int(meta["bytes"]),
                           budget=self.budget_bytes, last_seq=int(meta["last_seq"]),
                           acked_total=int(meta["acked_total"]),
                           last_ack_at=float(meta["last_ack_at"]) if meta["last_ack_at"] is not None else None)

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return int(self._meta("last_seq"))

    def state(self, scan_id: str) -> str | None:
        """'pending' | 'sent' | None (acked and removed, or never recorded here)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM outbox WHERE scan_id = ?", (scan_id,)).fetchone()
        return row[0] if row else None

    def rows(self) -> list[OutboxRow]:
        with self._lock:
            return [OutboxRow(*r) for r in self._db.execute(
                "SELECT seq, scan_id, payload, created_at, attempts FROM outbox ORDER BY seq")]
