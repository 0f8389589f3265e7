"""``scanemon-server resolver {worker,build-index}``: resolve pending scans; (re)build the catalog index."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("server.resolver")


def register(sub) -> None:
    p = sub.add_parser("resolver", help="server resolver of ambiguous scans")
    rs = p.add_subparsers(dest="resolver_command", required=True)
    w = rs.add_parser("worker", help="poll pending scans, resolve them, publish results to devices")
    w.add_argument("--once", action="store_true", help="one pass, then exit")
    w.add_argument("--no-publish", action="store_true", help="do not connect to the broker")
    w.set_defaults(func=_worker)
    b = rs.add_parser("build-index", help="load or build data_dir/index for the current catalog and model")
    b.set_defaults(func=_build)


def _build(args) -> int:
    from server.cli import settings_from_args
    from server.resolver.service import resolver_from_settings

    r = resolver_from_settings(settings_from_args(args))
    print(f"index: {len(r.index)} cards, kind={r.index.meta.get('kind')}, model={r.embedder.model_id}")
    return 0


def _worker(args) -> int:
    from server.cli import settings_from_args
    from server.db.session import Database
    from server.resolver.service import resolver_from_settings
    from server.resolver.worker import MqttResultPublisher, ResolverWorker

    settings = settings_from_args(args)
    db = Database(settings.database_url)
    pub = None if args.no_publish else MqttResultPublisher(settings.mqtt)
    worker = ResolverWorker(db, lambda: resolver_from_settings(settings), pub, batch=settings.resolver.worker_batch,
                            poll_s=settings.resolver.worker_poll_s)
    if args.once:
        n = worker.run_once()
        print(f"decided {n} scans: {worker.stats}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    worker.stop()
    if pub is not None:
        pub.close()
    return 0
