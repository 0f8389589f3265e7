"""``scanemon-server users``: create users, issue/revoke tokens, bind devices."""

from __future__ import annotations

import getpass
import sys


def register(sub) -> None:
    p = sub.add_parser("users", help="users, API tokens and device binding")
    us = p.add_subparsers(dest="users_command", required=True)
    c = us.add_parser("create", help="create a user (prompts for the password unless --password-stdin)")
    c.add_argument("username")
    c.add_argument("--email")
    c.add_argument("--admin", action="store_true")
    c.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    c.add_argument("--no-password", action="store_true", help="token-only user (no web login)")
    c.add_argument("--collection", default="My collection", help="create this first collection ('' for none)")
    c.set_defaults(func=_create)
    ls = us.add_parser("list", help="list users")
    ls.set_defaults(func=_list)
    pw = us.add_parser("set-password", help="set a user's password (ends their web sessions)")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=_set_password)
    t = us.add_parser("token", help="issue an API token (printed once)")
    t.add_argument("username")
    t.add_argument("--name", default="cli")
    t.add_argument("--scopes", default="read,write,review", help="comma-separated: read,write,review,admin,device")
    t.add_argument("--days", type=int, help="expire after N days")
    t.set_defaults(func=_token)
    r = us.add_parser("revoke-token", help="revoke a token by id or prefix")
    r.add_argument("token", help="token id or prefix")
    r.set_defaults(func=_revoke)
    b = us.add_parser("bind-device", help="bind a device to a user and target collection")
    b.add_argument("device_id")
    b.add_argument("username")
    b.add_argument("--collection", help="collection name or id (default: the user's first)")
    b.set_defaults(func=_bind)


def _db(args):
    from server.cli import settings_from_args
    from server.db.session import Database

    return Database(settings_from_args(args).database_url)


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    a = getpass.getpass("password: ")
    if a != getpass.getpass("again: "):
        raise SystemExit("passwords differ")
    return a


def _user(s, username):
    from sqlalchemy import select

    from server.db.models import User

    u = s.scalar(select(User).where(User.username == username))
    if u is None:
        raise SystemExit(f"no user {username!r}")
    return u


def _create(args) -> int:
    from server import accounts
    from server.db.models import Collection

    password = None if args.no_password else _password(args)
    if password is not None and len(password) < 8:
        print("error: password must have at least 8 characters", file=sys.stderr)
        return 1
    db = _db(args)
    try:
        with db.session() as s:
            u = accounts.create_user(s, args.username, password, email=args.email, is_admin=args.admin)
            if args.collection:
                s.add(Collection(user_id=u.id, name=args.collection))
            print(f"user {u.username} id={u.id} admin={u.is_admin}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    return 0


def _list(args) -> int:
    from sqlalchemy import select

    from server.db.models import User

    db = _db(args)
    with db.session() as s:
        for u in s.scalars(select(User).order_by(User.id)):
            print(f"{u.id}\t{u.username}\t{'admin' if u.is_admin else ''}\t{u.email or ''}")
    db.dispose()
    return 0


def _set_password(args) -> int:
    from server import accounts

    password = _password(args)
    if len(password) < 8:
        print("error: password must have at least 8 characters", file=sys.stderr)
        return 1
    db = _db(args)
    with db.session() as s:
        u = _user(s, args.username)
        u.password_hash = accounts.hash_password(password)
        accounts.end_all_sessions(s, u.id)
    db.dispose()
    print("password set")
    return 0


def _token(args) -> int:
    from datetime import datetime, timedelta, timezone

    from server.auth import issue_token

    db = _db(args)
    try:
        with db.session() as s:
            u = _user(s, args.username)
            exp = datetime.now(timezone.utc) + timedelta(days=args.days) if args.days else None
            token = issue_token(s, u, args.name, [x.strip() for x in args.scopes.split(",") if x.strip()], exp)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(token)
    return 0


def _revoke(args) -> int:
    from datetime import datetime, timezone

    from sqlalchemy import or_, select

    from server.db.models import ApiToken

    db = _db(args)
    with db.session() as s:
        cond = ApiToken.prefix == args.token
        if args.token.isdigit():
            cond = or_(cond, ApiToken.id == int(args.token))
        rows = list(s.scalars(select(ApiToken).where(cond)))
        for t in rows:
            t.revoked_at = t.revoked_at or datetime.now(timezone.utc)
    db.dispose()
    print(f"revoked {len(rows)} token(s)")
    return 0 if rows else 1


def _bind(args) -> int:
    from sqlalchemy import or_, select

    from server.db.models import Collection, Device

    db = _db(args)
    with db.session() as s:
        u = _user(s, args.username)
        d = s.get(Device, args.device_id)
        if d is None:
            d = Device(id=args.device_id, name=args.device_id)
            s.add(d)
        stmt = select(Collection).where(Collection.user_id == u.id)
        if args.collection:
            cond = Collection.name == args.collection
            if args.collection.isdigit():
                cond = or_(cond, Collection.id == int(args.collection))
            stmt = stmt.where(cond)
        col = s.scalar(stmt.order_by(Collection.id).limit(1))
        if args.collection and col is None:
            raise SystemExit(f"user {u.username} has no collection {args.collection!r}")
        d.user_id = u.id
        d.collection_id = col.id if col else None
        print(f"device {d.id} → user {u.username}, collection {col.name if col else '(none)'}")
    db.dispose()
    return 0
