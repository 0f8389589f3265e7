"""``scanemon-server bundle build|publish|list|current``: sign, store and announce device bundles."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("bundle", help="device bundles (sign, store, announce)")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    b = bsub.add_parser("build", help="sign a bundle folder (from device.bundle.write_bundle) and store its archive")
    b.add_argument("bundle_dir")
    b.add_argument("--signing-key", required=True, help="fleet ed25519 private key (fleet/keys/fleet_signing.key)")
    b.add_argument("--resign", action="store_true", help="replace an existing manifest.sig")
    b.add_argument("--publish", action="store_true", help="also make it current and announce it")
    b.add_argument("--base-url", default="", help="public server URL put into the announcement")
    b.set_defaults(func=_build)
    pub = bsub.add_parser("publish", help="make VERSION current and announce it (retained MQTT message)")
    pub.add_argument("version")
    pub.add_argument("--base-url", default="", help="public server URL put into the announcement")
    pub.set_defaults(func=_publish)
    ls = bsub.add_parser("list", help="stored bundles")
    ls.set_defaults(func=_list)
    cur = bsub.add_parser("current", help="the current bundle")
    cur.set_defaults(func=_current)


def _store(args):
    from server.bundles import BundleStore
    from server.cli import settings_from_args

    settings = settings_from_args(args)
    return settings, BundleStore(settings.data_dir / "bundles")


def _announce(settings, store, version: str, base_url: str) -> int:
    from server.bundles import announcement, publish

    info = store.set_current(version)
    ann = announcement(info, base_url)
    m = settings.mqtt
    try:
        publish(ann, m.host, m.port, m.username, m.password)
    except (OSError, TimeoutError) as exc:
        print(f"bundle {version} is current, but the announcement failed: {exc} (run `bundle publish` again)",
              file=sys.stderr)
        return 1
    print(f"announced bundle {version} on scanemon/v1/fleet/bundle: {ann.url} sha256={ann.sha256}")
    return 0


def _build(args) -> int:
    from device.bundle import BundleError
    from server.bundles import build

    settings, store = _store(args)
    try:
        info = build(args.bundle_dir, store, args.signing_key, resign=args.resign)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"stored bundle {info.version}: {info.size} bytes, sha256={info.sha256}")
    return _announce(settings, store, info.version, args.base_url) if args.publish else 0


def _publish(args) -> int:
    settings, store = _store(args)
    try:
        return _announce(settings, store, args.version, args.base_url)
    except KeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _list(args) -> int:
    _, store = _store(args)
    cur = store.current()
    for info in store.list():
        mark = "*" if cur and cur.version == info.version else " "
        print(f"{mark} {info.version:24} catalog={info.catalog_version:12} {info.size:>12} B  {info.created:%Y-%m-%d %H:%M}")
    return 0


def _current(args) -> int:
    _, store = _store(args)
    cur = store.current()
    print(json.dumps(cur.model_dump(mode="json"), indent=2) if cur else "none")
    return 0 if cur else 1
