"""Reliability suite fixtures (real Mosquitto + PostgreSQL + OS processes) and the one-line summary.

Every test appends a ``Verdict`` (harness.RESULTS); at the end pytest prints
``scans=N lost=L duplicated=D dead_lettered=X`` summed over the tests that ran, and writes the
per-test details to ``var/reliability/results.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.db.migrate import upgrade
from server.db.models import Card, CardSet, Collection, Device, User
from server.db.session import Database
from tests.reliability import harness


class Stack:
    def __init__(self, workdir: Path, db_url: str, broker):
        self.dir, self.db_url, self.broker = workdir, db_url, broker
        self.db = Database(db_url)
        self.devices: list[harness.DeviceProc] = []
        self.ingests: list[harness.IngestProc] = []
        with self.db.session() as s:
            s.add(CardSet(id="sv1", game="pokemon", name="Scarlet & Violet"))
            for n in (1, 2, 3):
                s.add(Card(id=f"sv1-{n}", game="pokemon", set_id="sv1", name=f"Card {n}", number=str(n),
                           illustration_id=f"ill-{n}"))
            user = User(username="owner")
            s.add(user)
            s.flush()
            coll = Collection(user_id=user.id, name="Scanned")
            s.add(coll)
            s.flush()
            self.user_id, self.collection_id = user.id, coll.id

    def register(self, device_id: str) -> None:
        with self.db.session() as s:
            s.add(Device(id=device_id, name=device_id, user_id=self.user_id, collection_id=self.collection_id))

    def device(self, device_id: str, *, port: int | None = None, **kw) -> harness.DeviceProc:
        self.register(device_id)
        d = harness.DeviceProc(self.dir / "devices", device_id, port or self.broker.port, **kw)
        self.devices.append(d)
        return d

    def ingest(self, index: int = 0) -> harness.IngestProc:
        i = harness.IngestProc(self.dir, self.db_url, self.broker.port, index)
        self.ingests.append(i)
        return i

    def close(self) -> None:
        for d in self.devices:
            d.cleanup()
        for i in self.ingests:
            i.kill()
        self.db.dispose()


@pytest.fixture
def stack(tmp_path, postgres_url, mosquitto_factory):
    upgrade(postgres_url)
    broker = mosquitto_factory(persistence=True)
    st = Stack(tmp_path, postgres_url, broker)
    yield st
    st.close()


def expected_accepts(n: int, ambiguous_every: int = 10, no_card_every: int = 7) -> int:
    """How many of seqs 1..n relay_sim records as accept (see device.relay_sim.scan_fields)."""
    return sum(1 for s in range(1, n + 1) if s % no_card_every and s % ambiguous_every)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not harness.RESULTS:
        return
    out = Path(config.rootpath) / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(harness.as_json(harness.RESULTS))
    tr = terminalreporter
    tr.section("reliability")
    for r in harness.RESULTS:
        tr.write_line(f"{r.test:45s} {r.line()}  {r.seconds:6.1f}s  {r.extra}")
    tr.write_line(harness.summary_line(harness.RESULTS))
