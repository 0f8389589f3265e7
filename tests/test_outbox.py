"""Outbox semantics: durability settings, seq persistence, states, ack removal, capacity policy."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from device.config import DeviceConfig, load_config
from device.configfile import ConfigFileError
from device.outbox import ROW_OVERHEAD, Outbox, OutboxError, OutboxFull
from device.protocol import ScanBatch, decode


def make(tmp_path, **kw) -> Outbox:
    return Outbox(tmp_path / "outbox.db", "pi-test", **kw)


def test_wal_and_synchronous_full(tmp_path):
    with make(tmp_path) as ob:
        assert ob.pragma("journal_mode") == "wal"
        assert ob.pragma("synchronous") == 2  # FULL


def test_seq_is_monotonic_and_survives_reopen(tmp_path):
    with make(tmp_path) as ob:
        seqs = [ob.record("accept", card_id="sv1-1").seq for _ in range(3)]
        assert seqs == [1, 2, 3]
        ob.ack([r.scan_id for r in ob.rows()])
        assert ob.depth() == 0
    with make(tmp_path) as ob:  # acked rows are gone, but numbering continues
        s = ob.record("no_card")
        assert s.seq == 4 and ob.last_seq == 4


def test_recorded_scan_is_committed_and_valid(tmp_path):
    with make(tmp_path) as ob:
        scan = ob.record("accept", card_id="sv1-11", score=0.9, bundle_version="b1")
    # A separate connection (another process, after a crash) sees the committed row.
    con = sqlite3.connect(tmp_path / "outbox.db")
    (payload,) = con.execute("SELECT payload FROM outbox WHERE scan_id = ?", (scan.scan_id,)).fetchone()
    con.close()
    assert json.loads(payload)["card_id"] == "sv1-11"


def test_states_pending_sent_acked(tmp_path):
    with make(tmp_path) as ob:
        a, b, c = (ob.record("accept", card_id="sv1-1") for _ in range(3))
        assert {ob.state(s.scan_id) for s in (a, b, c)} == {"pending"}
        rows = ob.claim(2)
        assert [r.seq for r in rows] == [1, 2]
        assert ob.state(a.scan_id) == ob.state(b.scan_id) == "sent" and ob.state(c.scan_id) == "pending"
        # Batch payload built from stored rows is a valid ScanBatch.
        batch = decode(ScanBatch, b'{"v":1,"scans":[' + b",".join(r.payload for r in rows) + b"]}")
        assert [s.scan_id for s in batch.scans] == [a.scan_id, b.scan_id]
        # A reconnect puts sent rows back; PUBACK-like events never delete anything.
        assert ob.requeue() == 2
        assert ob.state(a.scan_id) == "pending"
        assert ob.claim(10)[0].attempts == 2
        # Only the server's ack removes rows; unknown/duplicate ids are ignored.
        assert ob.ack([a.scan_id, a.scan_id, "0190a0a0-0000-7000-8000-000000000000"]) == 1
        assert ob.state(a.scan_id) is None
        assert ob.ack([a.scan_id]) == 0
        st = ob.stats()
        assert (st.depth, st.sent, st.acked_total, st.last_seq) == (2, 2, 1, 3)
        assert st.last_ack_at is not None


def test_claim_linger_and_byte_cap(tmp_path):
    with make(tmp_path) as ob:
        ob.record("accept", card_id="sv1-1")
        assert ob.claim(10, linger_s=5.0) == []  # partial batch waits
        assert len(ob.claim(10, linger_s=0.0)) == 1
        for _ in range(5):
            ob.record("accept", card_id="sv1-1")
        one = len(ob.rows()[-1].payload)
        assert len(ob.claim(10, max_bytes=2 * one)) == 2


def test_capacity_refuses_never_drops(tmp_path, caplog):
    budget = 64 * 1024
    with make(tmp_path, budget_bytes=budget, high_water=0.5) as ob:
        size = len(ob.record("accept", card_id="sv1-1").model_dump_json(exclude_none=True)) + ROW_OVERHEAD
        n = 1
        with caplog.at_level("WARNING", logger="device.outbox"):
            with pytest.raises(OutboxFull) as err:
                while True:
                    ob.record("accept", card_id="sv1-1")
                    n += 1
        assert "high-water" in caplog.text
        assert ob.high_water
        assert err.value.budget == budget and err.value.used + err.value.needed > budget
        assert ob.depth() == n == ob.last_seq  # everything accepted is still there, the refused one has no seq
        assert n * size <= budget
        # A refused batch is all-or-nothing.
        with pytest.raises(OutboxFull):
            ob.record_many([dict(decision="no_card")] * 50)
        assert ob.last_seq == n
        # Acks free space; recording works again and numbering has no hole.
        ob.ack([r.scan_id for r in ob.rows()[:10]])
        assert ob.record("no_card").seq == n + 1


def test_block_policy_waits_for_acks(tmp_path):
    with make(tmp_path, budget_bytes=64 * 1024, full_policy="block", block_timeout_s=0.0) as ob:
        while True:
            try:
                ob.record("no_card")
            except OutboxFull:
                break
        ob.block_timeout_s = 0.2
        t = time.monotonic()
        with pytest.raises(OutboxFull):
            ob.record("accept", card_id="sv1-1")
        assert time.monotonic() - t >= 0.2
        ob.block_timeout_s = 5.0
        first = ob.rows()[0].scan_id
        threading.Timer(0.2, lambda: ob.ack([first])).start()
        assert ob.record("no_card").seq == ob.last_seq  # unblocked by the ack


def test_outbox_belongs_to_one_device(tmp_path):
    make(tmp_path).close()
    with pytest.raises(OutboxError, match="belongs to device"):
        Outbox(tmp_path / "outbox.db", "pi-other")


def test_concurrent_recorders_get_distinct_seqs(tmp_path):
    # The appliance loop and the relay may be separate processes; two connections stand in for them.
    a, b = make(tmp_path), make(tmp_path)
    errors = []

    def rec(ob):
        try:
            for _ in range(50):
                ob.record("no_card")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=rec, args=(o,)) for o in (a, b)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors
    assert sorted(r.seq for r in a.rows()) == list(range(1, 101))
    a.close(), b.close()


def test_device_config_from_yaml(tmp_path):
    p = tmp_path / "device.yaml"
    p.write_text("device_id: pi-one\nmqtt:\n  port: 1884\n  protocol: '3.1.1'\noutbox:\n  path: /tmp/x.db\n")
    cfg = load_config(p)
    assert cfg.mqtt.port == 1884 and cfg.mqtt.protocol == "3.1.1" and cfg.relay.batch_max == 50
    p.write_text("device_id: pi-one\nrelay:\n  batch_max: 500\n")
    with pytest.raises(ConfigFileError, match=r"device.yaml:3: relay.batch_max"):
        load_config(p)
    p.write_text("device_id: pi-one\nmqtt:\n  hots: x\n")
    with pytest.raises(ConfigFileError, match=r":3: mqtt.hots"):
        load_config(p)
    assert all(f.description for f in DeviceConfig.model_fields.values())
