"""One ingest worker: MQTT subscriber → batched database commits → Ack to each device → PUBACK.

Ordering is the whole point::

    receive (no PUBACK yet) ─► classify ─► one transaction (scans, items, devices, dead letters) ─► COMMIT
        ─► publish Ack per device (QoS 1) ─► PUBACK each message to the broker

* A crash before COMMIT loses nothing: the broker still holds the un-PUBACKed messages for our
  persistent session (MQTT 5 clean_start=False + session expiry; clean_session=False on 3.1.1) and the
  device resends after its ack timeout anyway.
* A crash after COMMIT but before the Ack only causes a duplicate; the unique (device_id, scan_id)
  turns it into a no-op that is acked again.
* Database trouble splits in two: connection-level errors (database down, deadlock, serialization)
  are retried with backoff and nothing is acked meanwhile; anything else is isolated to the single
  offending message, which goes to ``dead_letters``. Ingest never crashes or stalls on input.

Threads: paho's network thread (``loop_start``) only enqueues; the worker thread does all database
work and publishes acks (paho's publish/ack are thread-safe in ``loop_start`` mode).

Test hook: ``SCANEMON_INGEST_CRASH_AFTER_COMMIT=N`` makes the process ``os._exit(75)`` right after
its N-th committed batch of scans, before any Ack or PUBACK (reliability suite).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from device.protocol import Ack, Scan, Topics, encode
from server.config import ServerSettings
from server.db.session import Database
from server.ingest import hooks
from server.ingest.store import Classified, Inbound, StoreOutcome, classify, dead_letter, store_batch

log = logging.getLogger(__name__)

CRASH_ENV = "SCANEMON_INGEST_CRASH_AFTER_COMMIT"
#: Scan ids per Ack message (an Ack of 1,000 UUIDs is ~40 KB).
ACK_CHUNK = 1000


@dataclass
class IngestStats:
    messages: int = 0
    batches: int = 0
    scans_new: int = 0
    scans_duplicate: int = 0
    applied: int = 0
    dead_letters: int = 0
    status_updates: int = 0
    acks_published: int = 0
    db_retries: int = 0
    connects: int = 0


def _transient(exc: BaseException) -> bool:
    """Errors worth retrying as-is (the database, not the data, is the problem)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(getattr(exc, "connection_invalidated", False))


class IngestWorker:
    """``start()`` connects and processes in the background; ``stop()`` ends it; ``run()`` blocks (CLI)."""

    def __init__(self, settings: ServerSettings, *, index: int = 0, db: Database | None = None,
                 on_ambiguous: Callable[[Scan], None] | None = None, shared: bool | None = None):
        self.settings = settings
        self.index = index
        self.db = db or Database(settings.database_url)
        self._own_db = db is None
        self.on_ambiguous = on_ambiguous
        self.v5 = settings.mqtt.protocol == "5"
        # amqtt (3.1.1) has no shared subscriptions: a single worker takes the plain wildcard.
        self.shared = self.v5 if shared is None else shared
        self.client_id = f"{settings.mqtt.client_id}-ingest-{index}"
        self.stats = IngestStats()
        self.crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self._commits_with_scans = 0
        self._queue: queue.Queue[Inbound] = queue.Queue()
        self._gen = 0  # connection generation: PUBACK only messages received on the current connection
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = self._make_client()

    # -- MQTT -------------------------------------------------------------------------------------------------
    def topics(self) -> list[str]:
        kinds = ("scans", "status", "telemetry")
        if self.shared:
            return [f"$share/{Topics.INGEST_GROUP}/{Topics.all_devices(k)}" for k in kinds]
        return [Topics.all_devices(k) for k in kinds]

    def _make_client(self) -> mqtt.Client:
        m = self.settings.mqtt
        if self.v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                                 manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                                 clean_session=False, manual_ack=True)
        if m.username:
            client.username_pw_set(m.username, m.password)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("ingest[%d]: broker refused the connection: %s", self.index, reason_code)
            return
        self._gen += 1
        self.stats.connects += 1
        # Always (re)subscribe: a broker that crashed before saving its state forgot our subscriptions.
        if self.v5:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics()])
        else:
            client.subscribe([(t, 1) for t in self.topics()])
        self._connected.set()
        log.info("ingest[%d]: connected (session present: %s), subscribed to %s", self.index,
                 flags.session_present, ", ".join(self.topics()))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest[%d]: disconnected (%s); paho reconnects", self.index, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(Inbound(msg.topic, msg.payload, msg.mid, msg.qos, self._gen))

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> "IngestWorker":
        m = self.settings.mqtt
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.ingest.session_expiry_s
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=False, properties=props)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._process_loop, name=f"ingest-{self.index}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        if self._own_db:
            self.db.dispose()

    def run(self) -> None:
        """Block until SIGTERM/SIGINT (the CLI's entry)."""
        import signal

        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        while not done.wait(1.0):
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("ingest worker thread died")
        self.stop()

    # -- processing -------------------------------------------------------------------------------------------
    def _gather(self) -> list[Classified]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        items = [classify(first)]
        n = items[0].n_scans
        limit = self.settings.ingest.batch_size
        deadline = time.monotonic() + self.settings.ingest.batch_wait_ms / 1000
        while n < limit:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            c = classify(msg)
            items.append(c)
            n += c.n_scans
        return items

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                items = self._gather()
                if items:
                    self.handle(items)
            except Exception:  # never die on one batch; its messages stay un-PUBACKed and come back
                log.exception("ingest[%d]: batch failed unexpectedly", self.index)
                time.sleep(0.5)

    def _commit(self, items: list[Classified]) -> StoreOutcome | None:
        """Commit ``items``; isolate non-transient failures down to single messages (→ dead letters).
        Returns None only when stopping while the database is unreachable."""
        delay = 0.1
        while True:
            try:
                with self.db.session() as s:
                    return store_batch(s, items)
            except SQLAlchemyError as exc:
                if _transient(exc):
                    self.stats.db_retries += 1
                    log.warning("ingest[%d]: database unavailable (%s); retrying in %.1fs", self.index,
                                type(exc).__name__, delay)
                    if self._stop.wait(delay):
                        return None
                    delay = min(delay * 2, 5.0)
                    continue
                if len(items) > 1:
                    log.warning("ingest[%d]: batch rejected (%s); retrying message by message", self.index, exc)
                    total = StoreOutcome()
                    for c in items:
                        one = self._commit([c])
                        if one is None:
                            return None
                        for d, ids in one.acks.items():
                            total.acks.setdefault(d, []).extend(ids)
                        total.new_ambiguous += one.new_ambiguous
                        for k in ("new", "duplicates", "applied", "dead_letters", "status_updates"):
                            setattr(total, k, getattr(total, k) + getattr(one, k))
                    return total
                if items[0].kind == "dead":
                    raise  # cannot even store the dead letter: a real bug, surface it
                reason = f"db_rejected: {type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__}: " \
                         f"{str(exc).splitlines()[0][:500]}"
                items = [dead_letter(items[0], reason)]

    def handle(self, items: list[Classified]) -> StoreOutcome | None:
        """Store one batch, then ack. Public so tests can drive the database side without a broker."""
        outcome = self._commit(items)
        if outcome is None:
            return None
        self.stats.messages += len(items)
        self.stats.batches += 1
        self.stats.scans_new += outcome.new
        self.stats.scans_duplicate += outcome.duplicates
        self.stats.applied += outcome.applied
        self.stats.dead_letters += outcome.dead_letters
        self.stats.status_updates += outcome.status_updates
        if outcome.acks:
            self._commits_with_scans += 1
            if self.crash_after and self._commits_with_scans >= self.crash_after:
                log.error("ingest[%d]: %s reached: exiting after commit, before ack", self.index, CRASH_ENV)
                os._exit(75)
        for device_id, ids in outcome.acks.items():
            for i in range(0, len(ids), ACK_CHUNK):
                self.client.publish(Topics.acks(device_id), encode(Ack(device_id=device_id, scan_ids=ids[i:i + ACK_CHUNK])),
                                    qos=1)
                self.stats.acks_published += 1
        gen = self._gen
        for c in items:
            if c.msg.qos > 0 and c.msg.gen == gen:
                self.client.ack(c.msg.mid, c.msg.qos)
        hook = self.on_ambiguous or hooks.on_ambiguous
        for scan in outcome.new_ambiguous:
            try:
                hook(scan)
            except Exception:
                log.exception("ingest[%d]: on_ambiguous hook failed for %s", self.index, scan.scan_id)
        return outcome
