"""The wire protocol between devices and the server: payloads and topics.

The device side owns this module and the server imports it, so the two can never drift apart.
Every payload carries ``v`` (schema version). A receiver rejects versions it does not know
instead of guessing, and every validation failure names the offending field.

Topics live under ``scanemon/v1/devices/{device_id}/`` (see ``Topics``); the broker ACL limits a
device to its own subtree and the server additionally checks that the ``device_id`` inside a
payload agrees with the topic it arrived on.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    BeforeValidator,
    ValidationError,
    field_validator,
    model_validator,
)

PROTOCOL_VERSION = 1
TOPIC_ROOT = "scanemon/v1"
#: Upper bound for any single MQTT payload we publish or accept (a batch of scans with one crop fits easily).
MAX_PAYLOAD_BYTES = 512 * 1024
#: Upper bound for one ambiguous-scan crop (JPEG).
MAX_CROP_BYTES = 200 * 1024
MAX_BATCH = 100
TOP_K = 5

DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,63}$")
# Real ids include punctuation: the Unown printings "ex10-!" and "ex10-?".
CARD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:!?-]{0,63}$")


class ProtocolError(ValueError):
    """A payload could not be decoded or validated. ``field`` names the first offending field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562) as a string: sortable scan ids without coordination."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _utc(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=timezone.utc)
    return v


UtcDatetime = Annotated[datetime, BeforeValidator(_utc)]


def _b64decode(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except Exception as exc:  # binascii.Error, ValueError
            raise ValueError(f"not valid base64: {exc}") from exc
    return v


Base64Bytes = Annotated[
    bytes,
    BeforeValidator(_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
]


class Decision(str, enum.Enum):
    """What the device concluded about one card."""

    accept = "accept"  # confident: counts straight into the collection
    ambiguous = "ambiguous"  # a shortlist: the server's resolver decides (crop attached)
    no_card = "no_card"  # the frame held no identifiable card


class ResultStatus(str, enum.Enum):
    resolved = "resolved"
    needs_review = "needs_review"


class DeviceState(str, enum.Enum):
    online = "online"
    offline = "offline"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    v: Literal[1] = Field(PROTOCOL_VERSION, description="Schema version of this payload.")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    card_id: str = Field(description="Catalog card (printing) id, e.g. 'sv1-11'.", pattern=CARD_ID_RE.pattern)
    score: float = Field(description="Similarity score in [-1, 1] (cosine) or [0, 1] (calibrated).", ge=-1.0, le=1.0)


class Scan(BaseModel):
    """One card seen by a device. Made and persisted on the device before anything is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scan_id: str = Field(description="UUIDv7 made on the device; unique with device_id.")
    device_id: str = Field(description="Device that saw the card; must match the topic.", pattern=DEVICE_ID_RE.pattern)
    seq: int = Field(description="Per-device counter, strictly increasing, persisted across restarts.", ge=1)
    captured_at: UtcDatetime = Field(description="When the frame was captured (UTC).")
    decision: Decision = Field(description="accept | ambiguous | no_card.")
    card_id: str | None = Field(None, description="The decided card when decision is accept.", pattern=CARD_ID_RE.pattern)
    score: float = Field(0.0, description="Top-1 similarity.", ge=-1.0, le=1.0)
    margin: float = Field(0.0, description="Top-1 minus top-2 similarity.", ge=-2.0, le=2.0)
    candidates: list[Candidate] = Field(default_factory=list, description="Top-k shortlist, best first.", max_length=20)
    quad: list[tuple[float, float]] | None = Field(None, description="Card corners in the frame (TL, TR, BR, BL).")
    crop: Base64Bytes | None = Field(None, description="Rectified card crop (JPEG, base64), only when ambiguous.")
    crop_margin: float = Field(
        0.0, description="Border of frame pixels the crop keeps around the card's quad, per side, as a fraction "
        "of the card's width (left, right) and height (top, bottom): the card is the crop's inner "
        "1/(1+2·margin). 0: the crop is exactly the quad. Servers before this field refuse it (extra fields are "
        "forbidden): update the server before the devices.", ge=0.0, le=0.25)
    quality_flag: str | None = Field(
        None, description="Why the device did not trust this card: the soft quality-gate failure it was "
        "identified despite (glare | too_blurry | partially_out_of_view), low_score (a confident detection "
        "whose best match is below the no-card score), pieces (one card read from pieces the detector cut "
        "apart, or from part of one outline that matched nothing: an equal part of cards laid edge to edge, one "
        "end, or a quad inside it; or from such an outline carried on past a piece of the card), touching (a "
        "reprint verdict read off a card lying against another, whose edge may have pulled its corners) or "
        "disputed (a card on a "
        "stack that the device accepted as different printings in the frames it lay still); the device accepts "
        "such a scan only where its bundle's accept_flags name the flag (glare in the demo bundle). None when the "
        "frame was clean.",
        pattern=r"^[a-z][a-z_]{0,31}$")
    bundle_version: str = Field("", description="Model/catalog bundle that produced the decision.", max_length=64)
    device_confidence: float | None = Field(
        None, description="The device's calibrated probability that its top candidate is the card "
        "(device.vision.confidence); None from a bundle without a confidence model. Servers before this field "
        "refuse it (extra fields are forbidden): update the server before the devices.", ge=0.0, le=1.0)

    @field_validator("scan_id")
    @classmethod
    def _scan_id_is_uuid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(v))
        except ValueError as exc:
            raise ValueError("must be a UUID") from exc

    @field_validator("crop")
    @classmethod
    def _crop_is_jpeg(cls, v: bytes | None) -> bytes | None:
        if v is None:
            return v
        if len(v) > MAX_CROP_BYTES:
            raise ValueError(f"crop is {len(v)} bytes, limit {MAX_CROP_BYTES}")
        if not v.startswith(b"\xff\xd8\xff"):
            raise ValueError("crop must be a JPEG")
        return v

    @field_validator("quad")
    @classmethod
    def _quad_has_four_corners(cls, v):
        if v is not None and len(v) != 4:
            raise ValueError("quad needs exactly 4 corners")
        return v

    @model_validator(mode="after")
    def _margin_needs_crop(self) -> "Scan":
        if self.crop_margin and self.crop is None:
            raise ValueError("crop_margin without a crop")
        return self

    @model_validator(mode="after")
    def _accept_needs_card(self) -> "Scan":
        if self.decision is Decision.accept and not self.card_id:
            raise ValueError("card_id is required when decision is accept")
        return self


class ScanBatch(_Payload):
    """What a device publishes on ``…/scans``: one or more scans (the relay may batch)."""

    kind: ClassVar[str] = "scans"
    scans: list[Scan] = Field(description="Scans, in seq order.", min_length=1, max_length=MAX_BATCH)


class Ack(_Payload):
    """Server → device on ``…/acks``: these scans are committed to the database; the outbox may drop them."""

    kind: ClassVar[str] = "acks"
    device_id: str = Field(description="Device the acked scans belong to.", pattern=DEVICE_ID_RE.pattern)
    scan_ids: list[str] = Field(description="Scan ids committed (including duplicates already stored).", min_length=1)
    acked_at: UtcDatetime = Field(default_factory=lambda: datetime.now(timezone.utc), description="Commit time.")


class ScanResult(_Payload):
    """Server → device on ``…/results``: how an ambiguous scan was resolved."""

    kind: ClassVar[str] = "results"
    device_id: str = Field(description="Device that sent the scan.", pattern=DEVICE_ID_RE.pattern)
    scan_id: str = Field(description="The ambiguous scan.")
    status: ResultStatus = Field(description="resolved | needs_review.")
    card_id: str | None = Field(None, description="Resolved card, when resolved.")
    confidence: float = Field(0.0, description="Calibrated confidence of card_id in [0, 1].", ge=0.0, le=1.0)
    candidates: list[Candidate] = Field(default_factory=list, description="Server shortlist, best first.")


class DeviceStatus(_Payload):
    """Device → all on ``…/status`` (retained; the last will says offline)."""

    kind: ClassVar[str] = "status"
    device_id: str = Field(description="Device id.", pattern=DEVICE_ID_RE.pattern)
    state: DeviceState = Field(description="online | offline.")
    bundle_version: str = Field("", description="Bundle the device is serving.", max_length=64)
    software_version: str = Field("", description="Device software version.", max_length=64)
    update_error: str | None = Field(
        None, description="Why the last bundle update failed (the previous bundle is still served); "
                          "absent when the last update succeeded.", max_length=500)
    at: UtcDatetime = Field(default_factory=lambda: datetime.now(timezone.utc), description="When this was said.")


class Telemetry(_Payload):
    """Device → server on ``…/telemetry`` at QoS 0: health figures, losing one is harmless."""

    kind: ClassVar[str] = "telemetry"
    device_id: str = Field(description="Device id.", pattern=DEVICE_ID_RE.pattern)
    at: UtcDatetime = Field(default_factory=lambda: datetime.now(timezone.utc), description="Sample time.")
    outbox_depth: int = Field(0, description="Scans not yet acked.", ge=0)
    last_ack_at: UtcDatetime | None = Field(None, description="When the last ack arrived.")
    scans_per_min: float = Field(0.0, description="Scans recorded in the last minute.", ge=0)
    fps: float = Field(0.0, description="Camera frames processed per second.", ge=0)
    latency_ms: dict[str, float] = Field(default_factory=dict, description="Median latency per stage (detect, embed, match…).")
    cpu_temp_c: float | None = Field(None, description="SoC temperature where readable.")
    bundle_version: str = Field("", description="Bundle in use.", max_length=64)
    uptime_s: float = Field(0.0, description="Process uptime.", ge=0)


class BundleAnnouncement(_Payload):
    """Server → devices on ``scanemon/v1/fleet/bundle`` (retained): the bundle every device should run."""

    kind: ClassVar[str] = "bundle"
    version: str = Field(description="Bundle version.", max_length=64)
    catalog_version: str = Field(description="Catalog the embeddings were built from.", max_length=64)
    url: str = Field(description="HTTP(S) URL of the bundle archive (authenticated download).")
    sha256: str = Field(description="sha256 of the archive.", pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(description="ed25519 signature of manifest.json, base64.")
    created: UtcDatetime = Field(description="When the bundle was built.")


PAYLOADS: dict[str, type[_Payload]] = {
    m.kind: m for m in (ScanBatch, Ack, ScanResult, DeviceStatus, Telemetry, BundleAnnouncement)
}


def _loc(err: dict) -> str:
    parts: list[str] = []
    for p in err.get("loc", ()):
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "<payload>"


def decode(model: type[_Payload] | str, payload: bytes | str) -> Any:
    """Parse and validate a payload; raise ``ProtocolError`` naming the field on any problem."""
    cls = PAYLOADS[model] if isinstance(model, str) else model
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}", "<payload>")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}", "<payload>") from exc
    if not isinstance(data, dict):
        raise ProtocolError("must be a JSON object", "<payload>")
    if "v" in data and data["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"unknown schema version {data['v']!r} (this side speaks {PROTOCOL_VERSION})", "v")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProtocolError(first["msg"], _loc(first)) from exc


def encode(payload: BaseModel) -> bytes:
    """Serialise a payload to compact JSON bytes."""
    return payload.model_dump_json(exclude_none=True).encode()


class Topics:
    """Topic names. One place, so device, server and broker ACLs agree."""

    ROOT = TOPIC_ROOT
    DEVICES = f"{TOPIC_ROOT}/devices"
    FLEET_BUNDLE = f"{TOPIC_ROOT}/fleet/bundle"
    INGEST_GROUP = "ingest"

    @staticmethod
    def _check(device_id: str) -> str:
        if not DEVICE_ID_RE.match(device_id):
            raise ValueError(f"invalid device_id {device_id!r}: lowercase letters, digits, '-' and '_' only")
        return device_id

    @classmethod
    def device(cls, device_id: str, kind: str) -> str:
        return f"{cls.DEVICES}/{cls._check(device_id)}/{kind}"

    @classmethod
    def scans(cls, device_id: str) -> str:
        return cls.device(device_id, "scans")

    @classmethod
    def acks(cls, device_id: str) -> str:
        return cls.device(device_id, "acks")

    @classmethod
    def results(cls, device_id: str) -> str:
        return cls.device(device_id, "results")

    @classmethod
    def status(cls, device_id: str) -> str:
        return cls.device(device_id, "status")

    @classmethod
    def telemetry(cls, device_id: str) -> str:
        return cls.device(device_id, "telemetry")

    @classmethod
    def all_devices(cls, kind: str) -> str:
        """Wildcard subscription for one kind across devices, e.g. ``…/devices/+/scans``."""
        return f"{cls.DEVICES}/+/{kind}"

    @classmethod
    def shared_scans(cls, group: str | None = None) -> str:
        """The ingest workers' shared subscription: the broker spreads scans over the group."""
        return f"$share/{group or cls.INGEST_GROUP}/{cls.all_devices('scans')}"

    @classmethod
    def parse(cls, topic: str) -> tuple[str, str]:
        """``scanemon/v1/devices/<id>/<kind>`` → ``(device_id, kind)``; ValueError otherwise."""
        parts = topic.split("/")
        if len(parts) != 5 or "/".join(parts[:3]) != cls.DEVICES or not DEVICE_ID_RE.match(parts[3]):
            raise ValueError(f"not a device topic: {topic!r}")
        return parts[3], parts[4]


def json_schemas() -> dict[str, dict]:
    """JSON Schema of every payload, keyed by kind (published in docs/protocol/)."""
    return {kind: cls.model_json_schema() for kind, cls in PAYLOADS.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m device.protocol schema OUTDIR`` writes one JSON Schema file per payload."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "schema":
        print("usage: python -m device.protocol schema OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for kind, schema in json_schemas().items():
        (out / f"{kind}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(PAYLOADS)} schemas to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
