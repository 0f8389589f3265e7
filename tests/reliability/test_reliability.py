"""Failure drills on real Mosquitto, PostgreSQL and OS processes. Each ends with the exactly-once check:
every seq 1..N of the device is in the database once, nothing else, and the collection counted each
accepted scan once. Run with ``make reliability`` (``python -m tests.reliability.run``)."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.protocol import ScanBatch, Scan as ScanPayload, Topics, encode, uuid7
from tests.reliability.conftest import expected_accepts
from tests.reliability.harness import TcpProxy, count_scans, record, verify, wait_for
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.postgres]


def check(stack, name: str, device, t0: float, *, dead: int = 0, **extra):
    v = verify(stack.db, device.device_id, device.scans)
    record(name, v, time.monotonic() - t0, **extra)
    assert (v.lost, v.duplicated) == (0, 0), v
    assert v.dead_lettered == dead, v
    assert v.extra["applied"] == expected_accepts(device.scans)
    assert v.extra["collection_quantity"] == expected_accepts(device.scans)
    assert device.depth() == 0
    return v


def finish(device, timeout: float = 180) -> dict:
    report = device.wait(timeout)
    assert report.get("drained") is True, report
    return report


def test_broker_killed_and_restarted_10_times(stack):
    ingest = stack.ingest().start().wait_subscribed()
    dev = stack.device("rel-broker", scans=2000, rate=150).start()
    t0 = time.monotonic()
    for _ in range(10):
        time.sleep(1.0)
        stack.broker.kill()  # SIGKILL: whatever the broker had not saved is gone
        time.sleep(0.3)
        stack.broker.start()
    rep = finish(dev)
    check(stack, "broker_killed_10x", dev, t0, device_connects=rep["connects"], resent=rep["resent_scans"])
    assert rep["connects"] >= 8  # a restart can fall inside a reconnect backoff
    assert ingest.alive()


def test_device_sigkilled_5_times(stack):
    stack.ingest().start().wait_subscribed()
    dev = stack.device("rel-sigkill", scans=2000, rate=150).start()
    t0 = time.monotonic()
    seqs = []
    for _ in range(5):
        time.sleep(2.5)  # about 1 s of it is interpreter start-up
        dev.kill()
        seqs.append(dev.last_seq())
        dev.start()
    finish(dev)
    check(stack, "device_sigkilled_5x", dev, t0, killed_at_seq=seqs)
    assert seqs[-1] < 2000, "the device finished before the last kill; the drill proved nothing"


def test_ingest_down_10k_backlog_drains(stack):
    # Let the worker create its persistent session, then take it down.
    ingest = stack.ingest().start().wait_subscribed()
    ingest.kill()
    dev = stack.device("rel-backlog", scans=10_000, rate=0, burst=100, inflight_window=1000, batch_max=100,
                       ack_timeout_s=30).start()
    wait_for(lambda: dev.last_seq() >= 10_000, 120, what="10k scans recorded")
    assert count_scans(stack.db, "rel-backlog") == 0
    queued = dev.depth()
    t0 = time.monotonic()
    ingest.start()
    finish(dev)
    drain = time.monotonic() - t0
    check(stack, "ingest_down_10k_backlog", dev, t0, queued_on_device=queued, drain_s=round(drain, 2),
          drain_scans_per_s=round(10_000 / drain))


def test_ingest_killed_between_commit_and_ack(stack):
    ingest = stack.ingest().start(SCANEMON_INGEST_CRASH_AFTER_COMMIT="3")
    dev = stack.device("rel-commit-crash", scans=1000, rate=200, ack_timeout_s=2).start()
    t0 = time.monotonic()
    wait_for(lambda: not ingest.alive(), 60, what="ingest to exit after commit")
    assert ingest.proc.returncode == 75
    committed_before_crash = count_scans(stack.db, "rel-commit-crash")
    assert committed_before_crash > 0
    time.sleep(0.5)
    ingest.start()
    rep = finish(dev)
    check(stack, "ingest_crash_after_commit", dev, t0, committed_unacked=committed_before_crash,
          duplicate_acks=rep["duplicate_acks"], resent=rep["resent_scans"])


def test_network_partition_blackhole(stack):
    stack.ingest().start().wait_subscribed()
    proxy = TcpProxy(stack.broker.port, free_port()).start()
    try:
        dev = stack.device("rel-partition", port=proxy.port, scans=1500, rate=150, keepalive=2,
                           ack_timeout_s=3).start()
        t0 = time.monotonic()
        time.sleep(3)
        proxy.blackhole()
        before = count_scans(stack.db, "rel-partition")
        time.sleep(6)
        during = count_scans(stack.db, "rel-partition")
        proxy.heal()
        rep = finish(dev)
        check(stack, "network_partition_blackhole", dev, t0, stored_during_partition=during - before,
              proxy_connections=proxy.connections, device_connects=rep["connects"])
        assert during - before < 200  # nothing (but what was already in the pipe) got through
        assert proxy.connections >= 2  # the device noticed the dead link and reconnected
    finally:
        proxy.stop()


def test_two_workers_one_killed(stack):
    a, b = stack.ingest(0).start(), stack.ingest(1).start()
    a.wait_subscribed(), b.wait_subscribed()
    dev = stack.device("rel-two-workers", scans=2000, rate=200, ack_timeout_s=2).start()
    t0 = time.monotonic()
    time.sleep(4)
    b.kill()
    rep = finish(dev)
    check(stack, "two_workers_one_killed", dev, t0, resent=rep["resent_scans"])
    assert a.alive() and not b.alive()


def _malformed(i: int, device_id: str) -> bytes:
    good = ScanPayload(scan_id=uuid7(), device_id=device_id, seq=10_000_000 + i, captured_at="2024-01-01T00:00:00Z",
                       decision="accept", card_id="sv1-1")
    kind = i % 5
    if kind == 0:
        return b"\x00garbage" + str(i).encode()
    if kind == 1:
        return json.dumps({"v": 99, "scans": []}).encode()
    if kind == 2:
        return encode(ScanBatch(scans=[good])).replace(b'"accept"', b'"maybe"')
    if kind == 3:
        return encode(ScanBatch(scans=[good.model_copy(update={"device_id": "someone-else"})]))
    return b'{"v":1,"scans":[]}' if i % 100 else b'{"v":1,"scans":[]}' + b" " * (600 * 1024)  # empty / oversized


def test_malformed_payloads_interleaved(stack):
    stack.ingest().start().wait_subscribed()
    dev = stack.device("rel-malformed", scans=2000, rate=200).start()
    t0 = time.monotonic()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rel-vandal", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", stack.broker.port)
    c.loop_start()
    try:
        topic = Topics.scans("rel-malformed")
        for i in range(1000):
            c.publish(topic, _malformed(i, "rel-malformed"), qos=1).wait_for_publish(10)
            time.sleep(0.008)  # spread over the device's stream
    finally:
        c.loop_stop()
        c.disconnect()
    finish(dev)
    wait_for(lambda: verify(stack.db, "rel-malformed", 2000).dead_lettered >= 1000, 60, what="dead letters")
    check(stack, "malformed_1000_interleaved", dev, t0, dead=1000)
