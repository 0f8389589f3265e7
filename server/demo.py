"""``make demo``: the whole system on one box.

Server (SQLite) + embedded MQTT broker + ingest worker + a simulated device that scans a counter stack
of card images (real sv1 scans and our own renders) through the real vision pipeline, outbox and relay.
Results land in the demo collection, visible in the web page.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("scanemon.demo")

DEMO_USER, DEMO_PASSWORD = "demo", "scanemon-demo"
DEMO_DEVICE, DEMO_COLLECTION = "demo-scanner", "Counter stack"
REPO = Path(__file__).resolve().parents[1]


def _ensure_catalog(db, root: Path, images: Path | None) -> None:
    from server.catalog.importer import import_catalog
    from server.catalog.sources import PokemonTCGSource
    from server.db.models import CatalogMeta

    source = PokemonTCGSource(root, images=images)
    with db.session() as s:
        meta = s.get(CatalogMeta, source.name)
        if meta is not None and meta.version == source.version():
            log.info("catalog %s already imported (%d cards)", meta.version, meta.cards)
            return
    log.info("importing the catalog (about 20 s)…")
    report = import_catalog(db, source)
    log.info("catalog: %s", report.line())


def _ensure_owner(db) -> int:
    """Demo user, collection and device binding; returns the collection id."""
    from sqlalchemy import select

    from server.accounts import create_user
    from server.db.models import Collection, Device, User

    with db.session() as s:
        user = s.scalar(select(User).where(User.username == DEMO_USER)) or create_user(
            s, DEMO_USER, DEMO_PASSWORD, is_admin=True)
        coll = s.scalar(select(Collection).where(Collection.user_id == user.id, Collection.name == DEMO_COLLECTION))
        if coll is None:
            coll = Collection(user_id=user.id, name=DEMO_COLLECTION, description="Scanned by make demo")
            s.add(coll)
            s.flush()
        dev = s.get(Device, DEMO_DEVICE) or Device(id=DEMO_DEVICE, name="Demo counter scanner")
        dev.user_id, dev.collection_id = user.id, coll.id
        s.add(dev)
        return coll.id


def _stack_frames(workdir: Path, root: Path, images: Path | None, cards: int, seed: int) -> Path:
    """Render the demo's card pool (real sv1 scans + renders of a vintage set) and a counter-scan sequence."""
    from models.synth.stack import write_stack

    out = workdir / f"stack-{cards}-{seed}"
    if (out / "counts.json").exists():
        return out
    catalog = workdir / "catalog"
    if not any(catalog.glob("*.jpg")):
        import subprocess

        cmd = [sys.executable, "-m", "models.synth", "catalog", "--pokemon-tcg-data", str(root), "--out", str(catalog),
               "--sets", "sv1,base1"]
        if images:
            cmd += ["--images", str(images)]
        subprocess.run(cmd, check=True)
    log.info("simulating a counter stack of %d cards…", cards)
    write_stack(catalog, out, cards, seed)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.demo", description=__doc__)
    ap.add_argument("--pokemon-tcg-data", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--dir", type=Path, default=Path("var/demo"), help="where the demo keeps its state")
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundles" / "demo")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    ap.add_argument("--mqtt-port", type=int, default=11883, help="embedded broker port (0: any free port)")
    ap.add_argument("--cards", type=int, default=12, help="cards in the simulated stack")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fps", type=float, default=15.0, help="camera frame rate of the simulated device")
    ap.add_argument("--exit-when-done", action="store_true", help="stop once every scan is acked (for tests/CI)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import uvicorn

    from device.appliance import Appliance, Feedback
    from device.config import DeviceConfig
    from device.outbox import Outbox
    from device.relay import Relay
    from device.vision.camera import open_source
    from device.vision.pipeline import VisionPipeline
    from device.vision.stack import StackConfig
    from server.app import create_app
    from server.broker import EmbeddedBroker
    from server.config import MqttSettings, ServerSettings
    from server.db.migrate import upgrade
    from server.db.session import Database
    from server.ingest.worker import IngestWorker

    workdir = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mqtt_port = args.mqtt_port or _free_port()
    args.port = args.port or _free_port()
    settings = ServerSettings(
        database_url=f"sqlite:///{workdir / 'scanemon.db'}", data_dir=workdir, host=args.host, port=args.port,
        catalog_images=workdir / "catalog", mqtt=MqttSettings(port=mqtt_port, protocol="3.1.1", embedded=True))
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    _ensure_catalog(db, args.pokemon_tcg_data, args.images)
    _ensure_owner(db)
    stack = _stack_frames(workdir, args.pokemon_tcg_data, args.images, args.cards, args.seed)

    broker = EmbeddedBroker(port=mqtt_port).start()
    ingest = IngestWorker(settings, db=db).start()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, db), host=args.host, port=args.port, log_level="warning"))
    threading.Thread(target=server.run, name="http", daemon=True).start()
    url = f"http://{args.host}:{args.port}"

    device_cfg = DeviceConfig.model_validate({
        "device_id": DEMO_DEVICE, "bundle_version": "",
        "mqtt": {"port": mqtt_port, "protocol": "3.1.1"},
        "outbox": {"path": str(workdir / "device-outbox.db")},
        "relay": {"telemetry_interval_s": 5},
    })
    outbox = Outbox.from_config(device_cfg)
    pipeline = VisionPipeline.from_bundle(args.bundle)
    device_cfg = device_cfg.model_copy(update={"bundle_version": pipeline.bundle_version})
    relay = Relay(device_cfg, outbox).start()
    print(f"\nScanemon demo: web page {url}  (login {DEMO_USER} / {DEMO_PASSWORD})", flush=True)
    print(f"simulated device '{DEMO_DEVICE}' scans {stack / 'frames'} …", flush=True)
    app = Appliance(pipeline, open_source(f"dir:{stack / 'frames'}", fps=args.fps), outbox, Feedback(), StackConfig())
    stats = app.run()
    deadline = time.monotonic() + 60
    while outbox.depth() and time.monotonic() < deadline:
        time.sleep(0.2)
    import json

    truth = json.loads((stack / "counts.json").read_text())
    print(f"\ncounted {stats.counted} cards (stack truth: {sum(truth.values())}), by decision {stats.by_decision}; "
          f"outbox depth {outbox.depth()}; median ms {stats.medians()}", flush=True)
    print(f"collection '{DEMO_COLLECTION}': {url}/  — Ctrl-C to stop", flush=True)
    ok = outbox.depth() == 0
    try:
        if not args.exit_when_done:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
        outbox.close()
        ingest.stop()
        server.should_exit = True
        broker.stop()
        db.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
