"""Resolver worker: pending (ambiguous) scans -> resolved | needs_review, result published to the device.

Degradation by design: ingest only stores scans (status ``pending``) and calls ``notify`` (a non-blocking
wake-up, see ``server/ingest/hooks.py``). This worker polls the table, so when the resolver is down, slow or
restarting, scans simply wait as ``pending`` and are resolved when it is back; nothing is lost, ingest never
waits. Several workers may run: PostgreSQL rows are claimed with ``FOR UPDATE SKIP LOCKED``.

Per scan: resolve its crop (with the device's candidates in the shortlist); confidence >= threshold ->
``apply_scan(status="resolved")`` (counted into its collection exactly once), else ``needs_review`` with the
server shortlist first in ``candidates``. Then a ``ScanResult`` goes to ``Topics.results(device_id)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
from sqlalchemy import select

from device.protocol import Candidate, ScanResult, Topics, encode
from server.db.models import Scan, ScanStatus, utcnow
from server.resolver.verify import CropError

log = logging.getLogger(__name__)

_wake = threading.Event()


def notify(device_id: str, scan_id: str) -> None:
    """Called by ingest after storing an ambiguous scan: wake an in-process worker now (never blocks)."""
    _wake.set()


def _device_candidates(scan: Scan) -> list[str]:
    out = []
    for c in scan.candidates or []:
        cid = c.get("card_id") if isinstance(c, dict) else (c[0] if isinstance(c, (list, tuple)) and c else None)
        if cid:
            out.append(str(cid))
    if scan.card_id and scan.card_id not in out:
        out.insert(0, scan.card_id)
    return out


def required_confidence(resolver, scan, threshold: float | None = None) -> float:
    """The confidence ``scan`` must reach to be resolved: ``threshold`` (default ``accept_confidence``), or
    ``low_score_accept_confidence`` when the device matched it to nothing (``quality_flag`` low_score). Such
    scans are real cards whose corners the device got wrong as often as things that are not catalog cards at
    all, and the calibration saw only catalog cards. Shared with the final-answer evaluation."""
    t = resolver.config.accept_confidence if threshold is None else threshold
    if getattr(scan, "quality_flag", None) == "low_score":
        t = max(t, resolver.config.low_score_accept_confidence)
    return t


def resolve_scan(resolver, scan) -> object | None:
    """The resolver's answer for one stored ambiguous scan: its JPEG crop decoded, the device's candidates
    in the shortlist. None when the scan has no readable crop, or none with a card inside its margin (then a
    person decides).

    Shared by the worker and the final-answer evaluation (``models/eval/final.py``), so the evaluation
    measures exactly what production does with a scan."""
    if not scan.crop:
        return None
    img = cv2.imdecode(np.frombuffer(scan.crop, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    try:
        return resolver.resolve_crop(img, _device_candidates(scan), margin=scan.crop_margin or 0.0)
    except CropError as exc:  # the device's bad input: a person decides; retrying would block the queue
        log.warning("resolver: scan %s: %s", scan.scan_id, exc)
        return None


class MqttResultPublisher:
    """Publishes ScanResult payloads (QoS 1) with its own paho client."""

    def __init__(self, mqtt_settings, client_id: str = "scanemon-resolver"):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        m = mqtt_settings
        proto = mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{m.client_id}-resolver", protocol=proto)
        if m.username:
            self.client.username_pw_set(m.username, m.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.client.loop_start()

    def __call__(self, result: ScanResult) -> None:
        self.client.publish(Topics.results(result.device_id), encode(result), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ResolverWorker:
    """Polls pending scans. ``resolver_factory`` is called lazily (and again after a failure)."""

    def __init__(self, db, resolver_factory: Callable[[], object], publish: Callable[[ScanResult], None] | None = None,
                 *, batch: int = 16, poll_s: float = 2.0, accept_confidence: float | None = None):
        self.db = db
        self.resolver_factory = resolver_factory
        self.publish = publish
        self.batch = batch
        self.poll_s = poll_s
        self.accept_confidence = accept_confidence
        self._resolver = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"resolved": 0, "needs_review": 0, "errors": 0, "published": 0}

    def resolver(self):
        if self._resolver is None:
            self._resolver = self.resolver_factory()
        return self._resolver

    def run_once(self) -> int:
        """Resolve up to ``batch`` pending scans; returns how many were decided. Raises if the resolver is down."""
        resolver = self.resolver()  # down -> raises before any scan is touched: they stay pending
        done = 0
        results: list[ScanResult] = []
        with self.db.session() as session:
            q = (select(Scan).where(Scan.status == ScanStatus.pending.value).order_by(Scan.id).limit(self.batch))
            if session.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            for scan in session.scalars(q).all():
                results.append(self._resolve_one(session, resolver, scan))
                done += 1
            session.commit()
        # Publish after the commit: the device may act on a result, so it must be durable first.
        for r in results:
            if self.publish is not None:
                try:
                    self.publish(r)
                    self.stats["published"] += 1
                except Exception:
                    log.exception("resolver: publishing result for %s failed", r.scan_id)
        return done

    def _resolve_one(self, session, resolver, scan: Scan) -> ScanResult:
        from server.collections_service import apply_scan

        res = resolve_scan(resolver, scan)
        threshold = required_confidence(resolver, scan, self.accept_confidence)
        if res is not None and res.card_id and res.confidence >= threshold:
            scan.confidence = res.confidence
            try:
                apply_scan(session, scan, res.card_id, status=ScanStatus.resolved.value)
                self.stats["resolved"] += 1
                return ScanResult(device_id=scan.device_id, scan_id=scan.scan_id, status="resolved", card_id=res.card_id,
                                  confidence=res.confidence, candidates=_cands(res.candidates))
            except ValueError as exc:  # e.g. card not in the database catalog: a person decides
                log.warning("resolver: cannot apply %s to scan %s: %s", res.card_id, scan.scan_id, exc)
        scan.status = ScanStatus.needs_review.value
        scan.confidence = res.confidence if res is not None else 0.0
        if res is not None:
            server = [{"card_id": c["card_id"], "score": c["score"], "source": "server"} for c in res.candidates]
            seen = {c["card_id"] for c in server}
            scan.candidates = server + [c for c in (scan.candidates or []) if not (isinstance(c, dict) and c.get("card_id") in seen)]
        scan.resolved_at = utcnow()
        self.stats["needs_review"] += 1
        return ScanResult(device_id=scan.device_id, scan_id=scan.scan_id, status="needs_review",
                          card_id=None, confidence=float(scan.confidence or 0.0),
                          candidates=_cands(res.candidates if res is not None else []))

    # --- loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception:
                self.stats["errors"] += 1
                log.exception("resolver worker: pass failed; pending scans stay pending and are retried")
                self._resolver = None
                n = 0
            if n < self.batch:  # caught up: sleep until the next poll or an ingest wake-up
                _wake.wait(self.poll_s)
                _wake.clear()

    def start(self) -> "ResolverWorker":
        self._thread = threading.Thread(target=self.run, name="resolver-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        _wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _cands(cands: list[dict]) -> list[Candidate]:
    return [Candidate(card_id=c["card_id"], score=max(-1.0, min(1.0, float(c["score"])))) for c in cands[:10]]


__all__ = ["MqttResultPublisher", "ResolverWorker", "notify", "resolve_scan"]
