"""The relay: publishes the outbox to the broker (paho-mqtt 2, QoS 1) and drops rows on the server's Ack.

One thread owns the paho client and drives it with ``client.loop()``; every callback therefore runs on
that thread and nothing is shared with paho's internals. Per iteration the relay

* (re)connects with exponential backoff and jitter while the link is down;
* on every CONNACK: requeues everything still unacked in the outbox (resend all after a reconnect),
  publishes the retained ``online`` status (the last will says ``offline``) and subscribes to its
  own ``acks`` and ``results``;
* tops up the in-flight window (scans published, server ack not yet seen) with batches of up to
  ``batch_max`` scans; a partial batch waits at most ``batch_wait_ms``;
* resends scans whose ack did not come back within ``ack_timeout_s`` (an ingest worker that died
  after PUBACK but before its commit, a session lost in a broker crash…);
* publishes telemetry at QoS 0 every ``telemetry_interval_s``.

Duplicates are expected and harmless: the server stores (device_id, scan_id) once and acks again.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from device.config import DeviceConfig
from device.outbox import Outbox, OutboxRow
from device.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    DeviceState,
    DeviceStatus,
    ProtocolError,
    ScanResult,
    Telemetry,
    Topics,
    decode,
    encode,
)

log = logging.getLogger(__name__)

_BATCH_HEAD = b'{"v":1,"scans":['
_BATCH_TAIL = b"]}"


class Backoff:
    """Exponential backoff with 'equal jitter': half the step is fixed, half random, so a fleet that lost
    the broker together does not come back in lockstep."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None):
        self.base, self.cap, self.attempt = base, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        step = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return step / 2 + self.rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class RelayStats:
    connects: int = 0
    disconnects: int = 0
    published_batches: int = 0
    published_scans: int = 0
    resent_scans: int = 0
    acked_scans: int = 0
    duplicate_acks: int = 0
    results: int = 0
    bad_messages: int = 0
    last_ack_at: float | None = None
    #: record→ack latencies in seconds for the most recent acks (bounded)
    latencies: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "latencies"}
        lat = sorted(self.latencies)
        if lat:
            d["latency_p50_ms"] = 1000 * lat[len(lat) // 2]
            d["latency_p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return d


class Relay:
    """Moves scans from an ``Outbox`` to the broker. ``start()`` runs it on a thread; ``stop()`` ends it."""

    def __init__(self, config: DeviceConfig, outbox: Outbox, *,
                 on_result: Callable[[ScanResult], None] | None = None,
                 latency_fn: Callable[[], dict[str, float]] | None = None):
        self.config = config
        self.outbox = outbox
        self.device_id = config.device_id
        self.on_result = on_result
        self.latency_fn = latency_fn  # the appliance loop reports per-stage latency for telemetry
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._socket_up = False
        self._inflight: dict[str, tuple[float, float]] = {}  # scan_id -> (published monotonic, recorded wall)
        self._backoff = Backoff(config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s)
        self._next_attempt = 0.0
        self._next_telemetry = 0.0
        self._started_at = time.monotonic()
        self._seq_samples: deque[tuple[float, int]] = deque()
        self._topic_scans = Topics.scans(self.device_id)
        self._topic_acks = Topics.acks(self.device_id)
        self._topic_results = Topics.results(self.device_id)
        self._topic_status = Topics.status(self.device_id)
        self._topic_telemetry = Topics.telemetry(self.device_id)
        self.client = self._make_client()

    # -- setup ------------------------------------------------------------------------------------------------
    @property
    def _v5(self) -> bool:
        return self.config.mqtt.protocol == "5"

    def _status(self, state: DeviceState) -> bytes:
        return encode(DeviceStatus(device_id=self.device_id, state=state, bundle_version=self.config.bundle_version,
                                   software_version=self.config.software_version))

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        if self._v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5)
        else:
            # Persistent session so acks published while we are away wait for us at the broker.
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv311,
                                 clean_session=False)
        if m.username:
            client.username_pw_set(m.username, m.password)
        if m.tls:
            client.tls_set(ca_certs=str(m.ca_certs) if m.ca_certs else None, cert_reqs=ssl.CERT_REQUIRED)
        client.connect_timeout = m.connect_timeout_s
        # The window is counted in scans; allow enough MQTT-level in-flight batches to fill it.
        client.max_inflight_messages_set(max(20, self.config.relay.inflight_window // max(1, self.config.relay.batch_max) + 2))
        client.will_set(self._topic_status, self._status(DeviceState.offline), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect(self) -> None:
        m = self.config.mqtt
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            self.client.connect(m.host, m.port, keepalive=m.keepalive, clean_start=False, properties=props)
        else:
            self.client.connect(m.host, m.port, keepalive=m.keepalive)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> "Relay":
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=f"relay-{self.device_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Say 'offline' (retained) and disconnect cleanly. Unacked scans stay in the outbox."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float = 60.0) -> bool:
        """Block until the outbox is empty (everything acked) or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.02)
        return self.outbox.depth() == 0

    def run(self) -> None:
        # Anything 'sent' by a previous run of this process was never acked: publish it again.
        n = self.outbox.requeue()
        if n:
            log.info("relay: %d scans were in flight when the relay last stopped; resending", n)
        poll = self.config.relay.poll_interval_ms / 1000
        try:
            while not self._stop.is_set():
                if not self._socket_up:
                    self._try_connect()
                    continue
                rc = self.client.loop(timeout=poll)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._link_down(f"loop: {mqtt.error_string(rc)}")
                    continue
                if self._connected.is_set():
                    self._pump()
                    self._telemetry_if_due()
            self._shutdown()
        except Exception:  # a bug here must not take the appliance down silently
            log.exception("relay crashed")
            raise

    def _try_connect(self) -> None:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            self._stop.wait(min(wait, 0.1))
            return
        try:
            self._connect()
            self._socket_up = True
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake…
            self._link_down(f"connect: {exc}")

    def _link_down(self, why: str) -> None:
        was_connected = self._connected.is_set()
        self._socket_up = False
        self._connected.clear()
        delay = self._backoff.next()
        self._next_attempt = time.monotonic() + delay
        if was_connected:
            self.stats.disconnects += 1
        log.info("relay: link down (%s); reconnecting in %.2fs", why, delay)

    def _shutdown(self) -> None:
        if self._socket_up:
            try:
                info = self.client.publish(self._topic_status, self._status(DeviceState.offline), qos=1, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline:
                    if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
                self.client.disconnect()
                self.client.loop(timeout=0.05)
            except Exception:  # best effort: the will covers us
                log.debug("relay: clean shutdown failed", exc_info=True)
        self._socket_up = False
        self._connected.clear()

    # -- callbacks (relay thread) -----------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("relay: broker refused the connection: %s", reason_code)
            return  # the broker closes the socket; loop() reports it and we back off
        self._backoff.reset()
        self.stats.connects += 1
        # Resend everything not yet acked: whatever was in flight may have died with the old connection.
        requeued = self.outbox.requeue()
        self.stats.resent_scans += requeued
        self._inflight.clear()
        client.subscribe([(self._topic_acks, 1), (self._topic_results, 1)])
        client.publish(self._topic_status, self._status(DeviceState.online), qos=1, retain=True)
        self._next_telemetry = 0.0
        self._connected.set()
        log.info("relay: connected to %s:%s (session present: %s, resending %d)", self.config.mqtt.host,
                 self.config.mqtt.port, flags.session_present, requeued)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self._topic_acks:
                self._handle_ack(decode(Ack, msg.payload))
            elif msg.topic == self._topic_results:
                result = decode(ScanResult, msg.payload)
                self.stats.results += 1
                if self.on_result:
                    self.on_result(result)
        except ProtocolError as exc:
            self.stats.bad_messages += 1
            log.warning("relay: ignoring bad message on %s: %s", msg.topic, exc)

    def _handle_ack(self, ack: Ack) -> None:
        if ack.device_id != self.device_id:
            self.stats.bad_messages += 1
            log.warning("relay: ack for %s arrived on our topic; ignored", ack.device_id)
            return
        removed = self.outbox.ack(ack.scan_ids)
        now = time.time()
        for sid in ack.scan_ids:
            entry = self._inflight.pop(sid, None)
            if entry is not None:
                self.stats.latencies.append(now - entry[1])
        self.stats.acked_scans += removed
        self.stats.duplicate_acks += len(ack.scan_ids) - removed
        self.stats.last_ack_at = now

    # -- publishing -------------------------------------------------------------------------------------------
    def _pump(self) -> None:
        r = self.config.relay
        now = time.monotonic()
        if self._inflight:
            stale = [sid for sid, (t, _) in self._inflight.items() if now - t > r.ack_timeout_s]
            if stale:
                for sid in stale:
                    del self._inflight[sid]
                n = self.outbox.requeue(stale)
                self.stats.resent_scans += n
                log.info("relay: %d scans unacked after %.0fs; resending", len(stale), r.ack_timeout_s)
        while len(self._inflight) < r.inflight_window:
            room = min(r.batch_max, r.inflight_window - len(self._inflight))
            # Only linger for a full batch when the window could take one; otherwise send what fits.
            rows = self.outbox.claim(room, max_bytes=MAX_PAYLOAD_BYTES - 1024,
                                     linger_s=r.batch_wait_ms / 1000 if room == r.batch_max else 0.0)
            if not rows:
                return
            if not self._publish(rows):
                return

    def _publish(self, rows: list[OutboxRow]) -> bool:
        # The rows hold each Scan already encoded; a batch is those bytes joined (no re-validation needed).
        payload = _BATCH_HEAD + b",".join(r.payload for r in rows) + _BATCH_TAIL
        info = self.client.publish(self._topic_scans, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.outbox.requeue([r.scan_id for r in rows])
            self._link_down(f"publish: {mqtt.error_string(info.rc)}")
            return False
        t = time.monotonic()
        for r in rows:
            self._inflight[r.scan_id] = (t, r.created_at)
        self.stats.published_batches += 1
        self.stats.published_scans += len(rows)
        return True

    def _telemetry_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_telemetry:
            return
        self._next_telemetry = now + self.config.relay.telemetry_interval_s
        self.client.publish(self._topic_telemetry, self.telemetry_payload(), qos=0)

    def telemetry_payload(self) -> bytes:
        s = self.outbox.stats()
        now = time.monotonic()
        self._seq_samples.append((now, s.last_seq))
        while len(self._seq_samples) > 1 and now - self._seq_samples[0][0] > 60:
            self._seq_samples.popleft()
        t0, seq0 = self._seq_samples[0]
        per_min = (s.last_seq - seq0) * 60 / (now - t0) if now - t0 >= 1 else 0.0
        last_ack = self.stats.last_ack_at or s.last_ack_at
        return encode(Telemetry(
            device_id=self.device_id, outbox_depth=s.depth,
            last_ack_at=datetime.fromtimestamp(last_ack, timezone.utc) if last_ack else None,
            scans_per_min=max(0.0, per_min), latency_ms=self.latency_fn() if self.latency_fn else {},
            bundle_version=self.config.bundle_version, uptime_s=now - self._started_at,
        ))
