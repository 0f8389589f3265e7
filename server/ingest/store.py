"""Turn received MQTT messages into database rows: validation, dedupe, collection counting, dead letters.

Pure database logic, no MQTT: ``classify()`` decides what a message is (or why it is a dead letter),
``store_batch()`` writes one batch inside the caller's transaction and says which acks to send once it
has committed.

Decisions worth knowing:

* Dedupe is the database's job: ``INSERT … ON CONFLICT (device_id, scan_id) DO NOTHING RETURNING`` tells
  which scans are new; only those count into a collection, in the same transaction, so a scan that
  arrives twice (resend, redelivery, two workers) is stored once and counted once. Duplicates are
  still acked so the device can drop them.
* Unknown device (no row in ``devices``): the scan is stored (no collection, not applied) and acked.
  The broker ACL already decides who may publish; keeping the scan lets an admin register the device
  later without the device having to hold the data. A *revoked* device's scans are dead-lettered.
* An accepted scan whose card is not in the server catalog (device bundle newer than the catalog)
  is stored as ``needs_review`` instead of failing the batch on the collection item's foreign key.
* Locks are taken in a fixed order (scans by device/seq, items by key, devices by id) so concurrent
  workers on PostgreSQL cannot deadlock each other.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import case, insert as generic_insert, select, update
from sqlalchemy.orm import Session

from device.protocol import (
    Decision,
    DeviceStatus,
    ProtocolError,
    Scan as ScanPayload,
    ScanBatch,
    Telemetry,
    Topics,
    decode,
)
from server.db.models import Card, CollectionItem, Condition, DeadLetter, Device, Finish, Scan, ScanStatus

#: Dead letters keep at most this much of the offending payload.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
#: Collection stack a device scan lands in until the device/UI can say otherwise.
DEFAULT_CONDITION, DEFAULT_FINISH, DEFAULT_LANGUAGE = Condition.NM.value, Finish.normal.value, "en"


@dataclass
class Inbound:
    """One MQTT message as received (``mid``/``qos``/``gen`` let the worker PUBACK it after commit)."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    gen: int = 0


@dataclass
class Classified:
    msg: Inbound
    kind: str  # scans | status | telemetry | dead
    device_id: str | None = None
    obj: Any = None
    reason: str | None = None

    @property
    def n_scans(self) -> int:
        return len(self.obj.scans) if self.kind == "scans" else 0


@dataclass
class StoreOutcome:
    acks: dict[str, list[str]] = field(default_factory=dict)  # device_id -> scan_ids to ack (new + duplicate)
    new_ambiguous: list[ScanPayload] = field(default_factory=list)
    new: int = 0
    duplicates: int = 0
    applied: int = 0
    dead_letters: int = 0
    status_updates: int = 0


def _reason(exc: ProtocolError) -> str:
    if exc.field == "<payload>" and "bytes, limit" in exc.reason:
        return f"oversized: {exc.reason}"
    if exc.field == "v":
        return f"unknown_version: {exc.reason}"
    if exc.field == "<payload>":
        return f"malformed: {exc.reason}"
    return f"invalid: {exc}"


def classify(msg: Inbound) -> Classified:
    """What is this message? Never raises: anything unusable becomes a ``dead`` item with a reason."""
    try:
        device_id, kind = Topics.parse(msg.topic)
    except ValueError as exc:
        return Classified(msg, "dead", reason=f"bad_topic: {exc}")
    model = {"scans": ScanBatch, "status": DeviceStatus, "telemetry": Telemetry}.get(kind)
    if model is None:
        return Classified(msg, "dead", device_id, reason=f"bad_topic: ingest does not take {kind!r} messages")
    try:
        obj = decode(model, msg.payload)
    except ProtocolError as exc:
        return Classified(msg, "dead", device_id, reason=_reason(exc))
    except Exception as exc:  # defensive: a validator bug must not stop ingest
        return Classified(msg, "dead", device_id, reason=f"malformed: {type(exc).__name__}: {exc}")
    claimed = {s.device_id for s in obj.scans} if kind == "scans" else {obj.device_id}
    if claimed != {device_id}:
        other = sorted(claimed - {device_id})
        return Classified(msg, "dead", device_id,
                          reason=f"device_mismatch: payload names {', '.join(other)} on the topic of {device_id}")
    return Classified(msg, kind, device_id, obj)


def dead_letter(c: Classified, reason: str | None = None) -> Classified:
    return Classified(c.msg, "dead", c.device_id, reason=reason or c.reason)


def _insert(session: Session):
    """The dialect's INSERT (with on_conflict_*) for this session's engine."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"ingest supports postgresql and sqlite, not {name}")
    return insert


def scan_columns(s: ScanPayload) -> dict:
    """The ``scans`` row columns that come straight from a wire scan (ingest adds status, collection, times).
    Shared with the final-answer evaluation, which hands the resolver scans shaped exactly like stored ones."""
    return dict(scan_id=s.scan_id, device_id=s.device_id, seq=s.seq, captured_at=s.captured_at,
                decision=s.decision.value, card_id=s.card_id, score=s.score, margin=s.margin,
                candidates=[c.model_dump() for c in s.candidates], quad=[list(p) for p in s.quad] if s.quad else None,
                crop=s.crop, crop_margin=s.crop_margin, quality_flag=s.quality_flag, bundle_version=s.bundle_version,
                device_confidence=s.device_confidence)


def store_batch(session: Session, items: list[Classified], now: datetime | None = None) -> StoreOutcome:
    """Write one batch in the caller's transaction. ``items`` may be modified (revoked → dead)."""
    now = now or datetime.now(timezone.utc)
    insert = _insert(session)
    out = StoreOutcome()

    device_ids = sorted({c.device_id for c in items if c.kind != "dead" and c.device_id})
    devices: dict[str, tuple[int | None, datetime | None]] = {}
    if device_ids:
        for d_id, coll, revoked in session.execute(
                select(Device.id, Device.collection_id, Device.revoked_at).where(Device.id.in_(device_ids))):
            devices[d_id] = (coll, revoked)
    for i, c in enumerate(items):
        if c.kind != "dead" and c.device_id in devices and devices[c.device_id][1] is not None:
            items[i] = dead_letter(c, f"revoked_device: {c.device_id} was revoked")

    # ---- scans ----
    scans: dict[tuple[str, str], ScanPayload] = {}
    for c in items:
        if c.kind == "scans":
            for s in c.obj.scans:
                scans.setdefault((s.device_id, s.scan_id), s)
    for d_id, s_id in scans:  # dict order: first arrival order, each scan once
        out.acks.setdefault(d_id, []).append(s_id)
    if scans:
        card_ids = sorted({s.card_id for s in scans.values() if s.decision is Decision.accept and s.card_id})
        known_cards = set(session.scalars(select(Card.id).where(Card.id.in_(card_ids)))) if card_ids else set()
        rows = []
        for s in sorted(scans.values(), key=lambda s: (s.device_id, s.seq, s.scan_id)):
            collection_id = devices.get(s.device_id, (None, None))[0]
            if s.decision is Decision.accept:
                status = ScanStatus.accepted if s.card_id in known_cards else ScanStatus.needs_review
            elif s.decision is Decision.ambiguous:
                status = ScanStatus.pending
            else:
                status = ScanStatus.no_card
            applied = status is ScanStatus.accepted and collection_id is not None
            rows.append(dict(
                **scan_columns(s), received_at=now, status=status.value,
                resolved_card_id=s.card_id if applied else None, collection_id=collection_id, applied=applied,
            ))
        # Core executemany on the table: one cached statement, sent as multi-row VALUES pages
        # ("insertmanyvalues"); RETURNING lists only the rows that were really inserted.
        conn = session.connection()
        scans_t = Scan.__table__
        stmt = (insert(scans_t).on_conflict_do_nothing(index_elements=["device_id", "scan_id"])
                .returning(scans_t.c.device_id, scans_t.c.scan_id))
        new: set[tuple[str, str]] = {(d, s) for d, s in conn.execute(stmt, rows)}
        out.new = len(new)
        # Copies inside this batch and rows already stored both count as duplicates.
        out.duplicates = sum(c.n_scans for c in items if c.kind == "scans") - len(new)

        # Count new accepted scans into their collections (one upsert per stack, in key order).
        increments: Counter[tuple[int, str]] = Counter()
        for r in rows:
            if r["applied"] and (r["device_id"], r["scan_id"]) in new:
                increments[(r["collection_id"], r["card_id"])] += 1
        if increments:
            values = [dict(collection_id=coll, card_id=card, quantity=n, condition=DEFAULT_CONDITION,
                           finish=DEFAULT_FINISH, language=DEFAULT_LANGUAGE, notes="", created_at=now, updated_at=now)
                      for (coll, card), n in sorted(increments.items())]
            items_t = CollectionItem.__table__
            up = insert(items_t)
            up = up.on_conflict_do_update(
                index_elements=["collection_id", "card_id", "condition", "finish", "language"],
                set_={"quantity": items_t.c.quantity + up.excluded.quantity, "updated_at": up.excluded.updated_at})
            conn.execute(up, values)
            out.applied = sum(increments.values())
        out.new_ambiguous = [s for k, s in scans.items() if k in new and s.decision is Decision.ambiguous]

        # Device bookkeeping: highest seq seen, last contact.
        top: dict[str, int] = defaultdict(int)
        for s in scans.values():
            top[s.device_id] = max(top[s.device_id], s.seq)
        for d_id in sorted(top):
            if d_id in devices:
                m = top[d_id]
                session.execute(update(Device).where(Device.id == d_id).values(
                    last_seq=case((Device.last_seq < m, m), else_=Device.last_seq), last_seen_at=now))

    # ---- status and telemetry (known devices only; an unknown device's chatter is not worth a row) ----
    for c in sorted((c for c in items if c.kind in ("status", "telemetry")), key=lambda c: c.device_id):
        if c.device_id not in devices:
            continue
        if c.kind == "status":
            st: DeviceStatus = c.obj
            values: dict[str, Any] = dict(state=st.state.value, last_seen_at=now)
            if st.bundle_version:
                values["bundle_version"] = st.bundle_version
            if st.software_version:
                values["software_version"] = st.software_version
            if st.update_error is not None or st.bundle_version:
                # A status with a bundle version and no error means the last update (if any) went through.
                values["update_error"] = st.update_error
        else:
            t: Telemetry = c.obj
            values = dict(outbox_depth=t.outbox_depth, telemetry=t.model_dump(mode="json"), last_seen_at=now)
            if t.bundle_version:
                values["bundle_version"] = t.bundle_version
        session.execute(update(Device).where(Device.id == c.device_id).values(**values))
        out.status_updates += 1

    # ---- dead letters ----
    dead = [c for c in items if c.kind == "dead"]
    if dead:
        session.execute(generic_insert(DeadLetter), [
            dict(received_at=now, topic=c.msg.topic[:1000], device_id=c.device_id, reason=c.reason or "unknown",
                 payload=bytes(c.msg.payload[:DEAD_LETTER_PAYLOAD_BYTES])) for c in dead])
        out.dead_letters = len(dead)
    return out
