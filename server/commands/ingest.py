"""``scanemon-server ingest [--workers N] [--worker-index K]``: MQTT scans → database → acks.

``--workers 1`` (or ``--worker-index K``) runs one worker in this process. ``--workers N`` supervises N
worker processes (``python -m server ingest --worker-index K``), restarting any that exits; every
worker joins the shared subscription group, so the broker spreads scans across them. Worker K's MQTT
client id (``<mqtt.client_id>-ingest-K``) is stable, which keeps its persistent session across restarts.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("server.ingest")


def register(sub) -> None:
    p = sub.add_parser("ingest", help="run ingest worker(s): MQTT scans → database → acks")
    p.add_argument("--workers", type=int, help="worker processes (default: ingest.workers from settings)")
    p.add_argument("--worker-index", type=int, help="run only worker K in this process (systemd ingest@K)")
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema at start")
    p.set_defaults(func=_ingest)


def _ingest(args) -> int:
    from server.cli import settings_from_args
    from server.db.migrate import upgrade

    settings = settings_from_args(args)
    workers = args.workers if args.workers is not None else settings.ingest.workers
    if workers < 0:
        print("error: --workers must be >= 0", file=sys.stderr)
        return 2
    if settings.mqtt.protocol == "3.1.1" and (workers > 1 or (args.worker_index or 0) > 0):
        # No shared subscriptions on 3.1.1: every worker would receive (and store, and ack) everything.
        print("error: MQTT 3.1.1 (embedded amqtt) supports exactly one ingest worker", file=sys.stderr)
        return 2
    if not args.no_migrate:
        upgrade(settings.database_url)
    if workers == 0 and args.worker_index is None:
        print("ingest.workers is 0: nothing to run")
        return 0
    if args.worker_index is not None or workers == 1:
        from server.ingest import IngestWorker

        worker = IngestWorker(settings, index=args.worker_index or 0)
        log.info("ingest worker %d: broker %s:%s (MQTT %s), database %s", worker.index, settings.mqtt.host,
                 settings.mqtt.port, settings.mqtt.protocol, settings.database_url.split("@")[-1])
        worker.run()
        return 0
    return _supervise(args, workers)


def _supervise(args, workers: int) -> int:
    base = [sys.executable, "-m", "server"]
    if args.config:
        base += ["--config", args.config]
    if args.database_url:
        base += ["--database-url", args.database_url]
    if args.verbose:
        base.append("-v")
    procs: dict[int, subprocess.Popen] = {}
    restarts: dict[int, float] = {}
    stopping = False

    def spawn(k: int) -> None:
        procs[k] = subprocess.Popen([*base, "ingest", "--worker-index", str(k), "--no-migrate"], env=os.environ.copy())
        log.info("ingest: worker %d started (pid %d)", k, procs[k].pid)

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for k in range(workers):
        spawn(k)
    while not stopping:
        time.sleep(0.5)
        for k, p in list(procs.items()):
            if p.poll() is not None and not stopping:
                # Back off a worker that keeps dying so a broken config does not spin the CPU.
                wait = 5.0 if time.monotonic() - restarts.get(k, 0) < 10 else 0.5
                log.warning("ingest: worker %d exited with %s; restarting in %.1fs", k, p.returncode, wait)
                restarts[k] = time.monotonic()
                time.sleep(wait)
                spawn(k)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0
