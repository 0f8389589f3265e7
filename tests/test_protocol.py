"""Wire protocol: round trips, field-naming errors, topics, JSON Schema export."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from device.protocol import (
    MAX_PAYLOAD_BYTES, Ack, Candidate, Decision, DeviceStatus, ProtocolError, Scan, ScanBatch, Telemetry, Topics,
    decode, encode, json_schemas, main, uuid7,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100


def make_scan(**kw) -> Scan:
    base = dict(scan_id=uuid7(), device_id="shop-1", seq=1, captured_at=datetime.now(timezone.utc),
                decision="accept", card_id="sv1-11", score=0.93, margin=0.2,
                candidates=[Candidate(card_id="sv1-11", score=0.93), Candidate(card_id="sv2-11", score=0.73)])
    base.update(kw)
    return Scan(**base)


def test_scan_batch_round_trip_keeps_every_field():
    s = make_scan(decision="ambiguous", card_id=None, crop=JPEG, quad=[(0, 0), (10, 0), (10, 14), (0, 14)],
                  quality_flag="glare", device_confidence=0.42)
    data = encode(ScanBatch(scans=[s]))
    back = decode("scans", data)
    assert back.scans[0] == s
    assert back.scans[0].crop == JPEG and back.scans[0].quality_flag == "glare"
    assert back.scans[0].device_confidence == 0.42


def test_clean_scan_does_not_send_quality_flag():
    """A clean scan's payload is the same as before the field existed (``encode`` drops None fields)."""
    data = json.loads(encode(ScanBatch(scans=[make_scan()])))
    assert "quality_flag" not in data["scans"][0]


def test_uuid7_is_time_ordered_and_version_7():
    ids = [uuid7() for _ in range(50)]
    assert all(i[14] == "7" for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["scans"][0].update(seq=0), "scans[0].seq"),
    (lambda d: d["scans"][0].update(device_id="Bad/Id"), "scans[0].device_id"),
    (lambda d: d["scans"][0].update(scan_id="nope"), "scans[0].scan_id"),
    (lambda d: d["scans"][0].update(decision="maybe"), "scans[0].decision"),
    (lambda d: d["scans"][0].update(crop="bm90IGpwZWc="), "scans[0].crop"),
    (lambda d: d["scans"][0].update(extra_field=1), "scans[0].extra_field"),
    (lambda d: d["scans"][0].update(quality_flag="Glare!"), "scans[0].quality_flag"),
    (lambda d: d["scans"][0].pop("captured_at"), "scans[0].captured_at"),
    (lambda d: d.update(scans=[]), "scans"),
    (lambda d: d.update(v=2), "v"),
])
def test_invalid_payload_names_the_field(mutate, field):
    data = json.loads(encode(ScanBatch(scans=[make_scan()])))
    mutate(data)
    with pytest.raises(ProtocolError) as err:
        decode("scans", json.dumps(data))
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_accept_without_card_is_rejected():
    with pytest.raises(ValueError, match="card_id is required"):
        make_scan(card_id=None)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b"\xff\xfe", b"{" * 10])
def test_garbage_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError):
        decode("scans", raw)


def test_oversized_payload_rejected_before_parsing():
    with pytest.raises(ProtocolError, match="limit"):
        decode("scans", b" " * (MAX_PAYLOAD_BYTES + 1))


def test_topics():
    assert Topics.scans("shop-1") == "scanemon/v1/devices/shop-1/scans"
    assert Topics.shared_scans() == "$share/ingest/scanemon/v1/devices/+/scans"
    assert Topics.parse("scanemon/v1/devices/shop-1/acks") == ("shop-1", "acks")
    for bad in ("scanemon/v1/devices/+/scans", "scanemon/v1/devices/a/b/c", "x/y"):
        with pytest.raises(ValueError):
            Topics.parse(bad)
    with pytest.raises(ValueError):
        Topics.scans("shop/#")


def test_other_payloads_round_trip():
    for p in (Ack(device_id="d1", scan_ids=[uuid7()]), DeviceStatus(device_id="d1", state="offline"),
              Telemetry(device_id="d1", outbox_depth=3, latency_ms={"detect": 4.2})):
        assert decode(type(p), encode(p)) == p


def test_json_schema_export(tmp_path):
    schemas = json_schemas()
    assert {"scans", "acks", "results", "status", "telemetry", "bundle"} <= set(schemas)
    assert main(["schema", str(tmp_path)]) == 0
    scan_schema = json.loads((tmp_path / "scans.schema.json").read_text())
    assert "Scan" in scan_schema["$defs"]
    assert scan_schema["$defs"]["Scan"]["properties"]["seq"]["description"]


def test_every_catalog_card_id_is_a_valid_wire_card_id(shared_data):
    """A scan naming any real printing must pass the protocol (the Unown cards are 'ex10-!' and 'ex10-?')."""
    from device.protocol import CARD_ID_RE
    from server.catalog.sources import PokemonTCGSource

    ids = [c.id for c in PokemonTCGSource(shared_data / "pokemon-tcg-data").iter_cards()]
    assert len(ids) > 19_000
    assert [i for i in ids if not CARD_ID_RE.fullmatch(i)] == []
