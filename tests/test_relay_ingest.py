"""Device outbox → relay → real Mosquitto → ingest worker → SQLite/PostgreSQL → ack → outbox empty."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from device.config import DeviceConfig
from device.outbox import Outbox
from device.protocol import Ack, Scan as ScanPayload, ScanBatch, Topics, decode, encode, uuid7
from device.relay import Backoff, Relay
from server.config import IngestSettings, MqttSettings, ServerSettings
from server.db.models import Card, CardSet, Collection, CollectionItem, DeadLetter, Device, Scan, User
from server.db.session import Database
from server.ingest import IngestWorker

pytestmark = pytest.mark.mosquitto


def seed(db: Database, *, device_id: str = "pi-one", revoked: bool = False) -> int:
    """A user with a collection, a registered device targeting it, and three cards. Returns collection id."""
    with db.session() as s:
        if s.get(CardSet, "sv1") is None:
            s.add(CardSet(id="sv1", game="pokemon", name="Scarlet & Violet"))
            for n in (1, 2, 3):
                s.add(Card(id=f"sv1-{n}", game="pokemon", set_id="sv1", name=f"Card {n}", number=str(n),
                           illustration_id=f"ill-{n}"))
        user = User(username=f"u-{device_id}")
        s.add(user)
        s.flush()
        coll = Collection(user_id=user.id, name="Binder")
        s.add(coll)
        s.flush()
        s.add(Device(id=device_id, name=device_id, user_id=user.id, collection_id=coll.id,
                     revoked_at=datetime.now(timezone.utc) if revoked else None))
        return coll.id


@pytest.fixture
def db(migrated_db_url):
    d = Database(migrated_db_url)
    yield d
    d.dispose()


@pytest.fixture
def worker(db, mosquitto):
    hooked: list = []
    settings = ServerSettings(database_url=db.url, mqtt=MqttSettings(port=mosquitto.port, keepalive=5),
                              ingest=IngestSettings(batch_wait_ms=5))
    w = IngestWorker(settings, db=db, on_ambiguous=hooked.append).start()
    w.hooked = hooked
    assert w.wait_connected(10)
    time.sleep(0.2)  # SUBACK
    yield w
    w.stop()


def device_config(tmp_path, port: int, device_id: str = "pi-one", **relay) -> DeviceConfig:
    return DeviceConfig.model_validate(dict(
        device_id=device_id, bundle_version="b-1",
        mqtt=dict(port=port, keepalive=5, reconnect_min_s=0.05, reconnect_max_s=0.5),
        outbox=dict(path=str(tmp_path / f"{device_id}.db")),
        relay=dict(batch_wait_ms=5, ack_timeout_s=5, telemetry_interval_s=0.2, **relay)))


@pytest.fixture
def device(tmp_path, mosquitto):
    made = []

    def make(device_id: str = "pi-one", **relay):
        cfg = device_config(tmp_path, mosquitto.port, device_id, **relay)
        ob = Outbox.from_config(cfg)
        r = Relay(cfg, ob).start()
        made.append((r, ob))
        return r, ob

    yield make
    for r, ob in made:
        r.stop()
        ob.close()


def wait_for(cond, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class Raw:
    """A bare MQTT client: publish anything, collect acks."""

    def __init__(self, port: int, device_id: str = "pi-one"):
        self.acks: list[Ack] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid7()[:8]}", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.acks.append(decode(Ack, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(Topics.acks(device_id), qos=1)
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def acked(self) -> set[str]:
        return {sid for a in self.acks for sid in a.scan_ids}

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def scan(seq: int, device_id: str = "pi-one", **kw) -> ScanPayload:
    base = dict(scan_id=uuid7(), device_id=device_id, seq=seq, captured_at=datetime.now(timezone.utc),
                decision="accept", card_id="sv1-1", score=0.9)
    return ScanPayload(**{**base, **kw})


def quantities(db: Database, collection_id: int) -> dict[str, int]:
    with db.session() as s:
        return dict(s.execute(select(CollectionItem.card_id, CollectionItem.quantity)
                              .where(CollectionItem.collection_id == collection_id)).all())


def test_scan_round_trip_empties_outbox(db, worker, device):
    coll = seed(db)
    relay, ob = device()
    assert relay.wait_connected(10)
    a = ob.record("accept", card_id="sv1-1", score=0.95, device_confidence=0.9991)
    b = ob.record("accept", card_id="sv1-1", score=0.95)
    amb = ob.record("ambiguous", score=0.7, crop=b"\xff\xd8\xff\xe0jpeg", quality_flag="glare")
    nc = ob.record("no_card")
    assert relay.wait_drained(15), ob.stats()
    with db.session() as s:
        rows = {r.scan_id: r for r in s.scalars(select(Scan).where(Scan.device_id == "pi-one"))}
        assert set(rows) == {a.scan_id, b.scan_id, amb.scan_id, nc.scan_id}
        # why the device did not accept it (a soft quality-gate failure) is kept with the scan
        assert rows[amb.scan_id].quality_flag == "glare" and rows[a.scan_id].quality_flag is None
        assert rows[a.scan_id].device_confidence == 0.9991 and rows[amb.scan_id].device_confidence is None
        assert rows[a.scan_id].status == "accepted" and rows[a.scan_id].applied
        assert rows[a.scan_id].collection_id == coll
        assert rows[amb.scan_id].status == "pending" and not rows[amb.scan_id].applied
        assert rows[amb.scan_id].crop == b"\xff\xd8\xff\xe0jpeg"
        assert rows[nc.scan_id].status == "no_card"
    assert quantities(db, coll) == {"sv1-1": 2}
    assert [s.scan_id for s in worker.hooked] == [amb.scan_id]

    def device_row():
        with db.session() as s:
            return s.get(Device, "pi-one")

    assert wait_for(lambda: device_row().state == "online" and device_row().telemetry.get("outbox_depth") == 0)
    d = device_row()
    assert d.last_seq == 4 and d.bundle_version == "b-1" and d.last_seen_at is not None
    relay.stop()  # clean stop says offline (retained)
    assert wait_for(lambda: device_row().state == "offline")


def test_duplicates_stored_once_counted_once_and_acked(db, worker, mosquitto):
    coll = seed(db)
    raw = Raw(mosquitto.port)
    s1, s2 = scan(1), scan(2, card_id="sv1-2")
    payload = encode(ScanBatch(scans=[s1, s2]))
    raw.publish(Topics.scans("pi-one"), payload)
    raw.publish(Topics.scans("pi-one"), payload)  # a resend
    raw.publish(Topics.scans("pi-one"), encode(ScanBatch(scans=[s2, s2])))  # duplicate inside one batch
    # Every copy is acked (copies inside one commit share one Ack).
    assert wait_for(lambda: worker.stats.messages >= 3 and raw.acked() == {s1.scan_id, s2.scan_id})
    assert worker.stats.scans_new == 2 and worker.stats.scans_duplicate >= 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Scan)) == 2
    assert quantities(db, coll) == {"sv1-1": 1, "sv1-2": 1}
    raw.close()


def test_dead_letters_with_reasons_and_ingest_keeps_going(db, worker, mosquitto):
    seed(db)
    seed(db, device_id="pi-gone", revoked=True)
    raw = Raw(mosquitto.port)
    good = scan(1)
    t = Topics.scans("pi-one")
    bad = {
        "malformed": (t, b"{not json"),
        "oversized": (t, b'{"v":1,"scans":[]}' + b" " * (600 * 1024)),
        "unknown_version": (t, json.dumps({"v": 2, "scans": []}).encode()),
        "invalid": (t, encode(ScanBatch(scans=[scan(2)])).replace(b'"sv1-1"', b'"bad card id!"')),
        "device_mismatch": (Topics.scans("pi-two"), encode(ScanBatch(scans=[scan(3)]))),
        "revoked_device": (Topics.scans("pi-gone"), encode(ScanBatch(scans=[scan(1, device_id="pi-gone")]))),
    }
    for topic, payload in bad.values():
        raw.publish(topic, payload)
    raw.publish(t, encode(ScanBatch(scans=[good])))
    assert wait_for(lambda: good.scan_id in raw.acked())

    def letters():
        with db.session() as s:
            return s.execute(select(DeadLetter.reason, DeadLetter.device_id, DeadLetter.payload)).all()

    assert wait_for(lambda: len(letters()) == len(bad))
    by_kind = {r.split(":")[0]: (r, d, p) for r, d, p in letters()}
    assert set(by_kind) == set(bad)
    assert by_kind["unknown_version"][0].startswith("unknown_version: unknown schema version 2")
    assert "scans[0].card_id" in by_kind["invalid"][0]
    assert by_kind["device_mismatch"][1] == "pi-two"
    assert len(by_kind["oversized"][2]) == 64 * 1024  # truncated copy kept
    with db.session() as s:
        assert s.scalars(select(Scan.scan_id)).all() == [good.scan_id]
    raw.close()


def test_unknown_device_is_stored_and_acked_without_collection(db, worker, device):
    seed(db)
    relay, ob = device("pi-stranger")
    ob.record("accept", card_id="sv1-1")
    assert relay.wait_drained(15)
    with db.session() as s:
        row = s.scalars(select(Scan).where(Scan.device_id == "pi-stranger")).one()
        assert row.status == "accepted" and not row.applied and row.collection_id is None
        assert s.scalar(select(func.count()).select_from(CollectionItem)) == 0


def test_relay_resends_after_broker_restart_and_batches(db, worker, device, mosquitto):
    coll = seed(db)
    relay, ob = device(batch_max=20, inflight_window=40)
    assert relay.wait_connected(10)
    ob.record_many([dict(decision="accept", card_id="sv1-3")] * 100)
    mosquitto.kill()
    time.sleep(0.3)
    ob.record_many([dict(decision="accept", card_id="sv1-3")] * 100)
    mosquitto.start()
    assert relay.wait_drained(30), ob.stats()
    assert relay.stats.connects >= 2 and relay.stats.published_batches < 200
    assert quantities(db, coll) == {"sv1-3": 200}
    with db.session() as s:
        seqs = s.scalars(select(Scan.seq).where(Scan.device_id == "pi-one").order_by(Scan.seq)).all()
    assert seqs == list(range(1, 201))


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(0.5, 8.0)
    delays = [b.next() for _ in range(7)]
    assert 0.25 <= delays[0] <= 0.5 and 4.0 <= delays[-1] <= 8.0
    assert len({round(d, 6) for d in delays}) == 7
    b.reset()
    assert b.next() <= 0.5


def test_mqtt_311_embedded_amqtt(tmp_path, sqlite_url):
    """The one-box setup: amqtt (MQTT 3.1.1, no shared subscriptions) with a single wildcard worker."""
    from server.broker import EmbeddedBroker
    from server.db.migrate import upgrade
    from tests.services import free_port

    upgrade(sqlite_url)
    db = Database(sqlite_url)
    coll = seed(db)
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    settings = ServerSettings(database_url=sqlite_url, mqtt=MqttSettings(port=port, protocol="3.1.1"),
                              ingest=IngestSettings(batch_wait_ms=5))
    worker = IngestWorker(settings, db=db).start()
    cfg = device_config(tmp_path, port).model_copy(update={"mqtt": device_config(tmp_path, port).mqtt.model_copy(
        update={"protocol": "3.1.1"})})
    ob = Outbox.from_config(cfg)
    relay = Relay(cfg, ob)
    try:
        assert worker.wait_connected(10)
        assert worker.topics()[0] == "scanemon/v1/devices/+/scans"
        time.sleep(0.3)
        relay.start()
        ob.record_many([dict(decision="accept", card_id="sv1-2")] * 30)
        assert relay.wait_drained(20), ob.stats()
        assert quantities(db, coll) == {"sv1-2": 30}
    finally:
        relay.stop()
        worker.stop()
        broker.stop()
        ob.close()
        db.dispose()
