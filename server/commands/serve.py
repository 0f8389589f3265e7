"""``scanemon-server serve``: the HTTP API (and, with --embedded-broker, an in-process MQTT broker)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP API and web page")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema at start")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    from server.app import create_app
    from server.cli import settings_from_args
    from server.db.migrate import upgrade

    settings = settings_from_args(args)
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if not args.no_migrate:
        upgrade(settings.database_url)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0
