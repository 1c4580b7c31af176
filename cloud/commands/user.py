"""``imagekit user``: cloud users and their EC2 credentials, the way ``oneuser`` manages them.

imagekit user create alice --password-file pw.txt [--admin]   # prints the EC2 keys once
imagekit user list [--json]
imagekit user show alice [--json]
imagekit user passwd alice --password-file new.txt
imagekit user delete alice [--cascade]   # refused while alice owns anything live, unless --cascade
imagekit user quota set alice --vms 4 --cpu 2 --memory 4G --images 10 --storage 20G
imagekit user quota show alice [--json]      # limits (own or the site default) and usage
imagekit user quota reset alice              # back to the site default (etc/quotas.conf)
imagekit user token create|list alice; imagekit user token revoke alice ID   # build service tokens

Without ``--password-file`` the password is asked for on the terminal (twice); ``-`` reads it from
standard input. A password file holds the password on its first line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from cloud.commands import user_tokens
from cloud.quotas import QuotaChange, Quotas, parse_limit
from cloud.users import User, UserStore
from imagekit.errors import InputError
from imagekit.locations import state_dir
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="user_command", metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="create a user; prints the EC2 access key and secret once")
    create.add_argument("name", metavar="NAME", help="the new user's name")
    create.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE")
    create.add_argument("--admin", action="store_true", help="may see and act on every user's resources")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", help="list users")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="show a user (never the secrets)")
    show.add_argument("user", metavar="ID|NAME", help="the user")
    show.set_defaults(func=cmd_show)

    passwd = sub.add_parser("passwd", help="change a user's password")
    passwd.add_argument("user", metavar="ID|NAME", help="the user")
    passwd.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE")
    passwd.set_defaults(func=cmd_passwd)

    delete = sub.add_parser(
        "delete",
        help="delete a user (refused while they own live resources); ids and names are never reused",
    )
    delete.add_argument("user", metavar="ID|NAME", help="the user")
    delete.add_argument(
        "--cascade",
        action="store_true",
        help="end the user's VMs and remove their images, STORAGE, networks and key pairs first",
    )
    delete.set_defaults(func=cmd_delete)

    _register_quota(sub.add_parser("quota", help="a user's quota: VMs, CPU, MEMORY, images, storage"))
    user_tokens.register(sub.add_parser("token", help="a user's API tokens for the build service"))


_QUOTA_OPTIONS = {
    "vms": ("N", "live VMs"),
    "cpu": ("X", "CPU (the sum of the VMs' CPU, as in their templates)"),
    "memory_mib": ("SIZE", "MEMORY of the VMs (4G, 512M; MiB without a unit)"),
    "images": ("N", "images (EC2 images and OCCI STORAGEs)"),
    "storage_bytes": ("SIZE", "bytes of uploaded images (20G)"),
}


def _register_quota(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quota_command", metavar="SUBCOMMAND")
    set_ = sub.add_parser("set", help="set limits ('unlimited' lifts one); others stay as they are")
    set_.add_argument("user", metavar="NAME", help="the user")
    for name, (metavar, what) in _QUOTA_OPTIONS.items():
        option = "--" + {"memory_mib": "memory", "storage_bytes": "storage"}.get(name, name)
        set_.add_argument(option, dest=name, metavar=metavar, help=f"at most this many {what}")
    set_.set_defaults(func=cmd_quota_set)
    show = sub.add_parser("show", help="limits in force and what the user uses")
    show.add_argument("user", metavar="NAME", help="the user")
    show.set_defaults(func=cmd_quota_show)
    reset = sub.add_parser("reset", help="back to the site default (DEFAULT_QUOTA in etc/quotas.conf)")
    reset.add_argument("user", metavar="NAME", help="the user")
    reset.set_defaults(func=cmd_quota_reset)


def _store(args: argparse.Namespace) -> UserStore:
    return UserStore(State.open(state_dir(args.state)))


def read_password(path: Path | None) -> str:
    if path is not None:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text", where=str(path)) from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        raise InputError("no password given", hint="use --password-file FILE (or - for standard input)")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise InputError("the passwords differ")
    return first


def _record(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "name": user.name,
        "admin": user.admin,
        "access_key": user.access_key,
        "created": user.created,
    }


def cmd_create(args: argparse.Namespace) -> int:
    created = _store(args).create(args.name, read_password(args.password_file), admin=args.admin)
    if args.json:
        print_json({**_record(created.user), "secret_key": created.secret_key})
        return 0
    print(f"ID: {created.user.id}")
    print(f"EC2_ACCESS_KEY={created.user.access_key}")
    print(f"EC2_SECRET_KEY={created.secret_key}")
    print("The secret key is shown only now; keep it.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    users = _store(args).list()
    if args.json:
        print_json([_record(u) for u in users])
        return 0
    rows = [["ID", "NAME", "ADMIN", "ACCESS KEY", "CREATED"]]
    rows += [[str(u.id), u.name, "yes" if u.admin else "no", u.access_key, u.created] for u in users]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    record = _record(_store(args).get(args.user))
    if args.json:
        print_json(record)
        return 0
    for key, value in record.items():
        print(f"{key.upper():<11}: {value}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    _store(args).set_password(args.user, read_password(args.password_file))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from cloud.accounts import delete_user

    removed = delete_user(State.open(state_dir(args.state)), args.user, cascade=args.cascade)
    if removed:
        print(f"ended and removed: {removed.describe()}", file=sys.stderr)
    return 0


def _quotas(args: argparse.Namespace) -> Quotas:
    from cloud.siteconfig import load_site

    return Quotas(State.open(state_dir(args.state)), load_site().default_limits)


def cmd_quota_set(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in _QUOTA_OPTIONS if getattr(args, name) is not None}
    if not given:
        raise InputError("name a limit to set", hint="--vms, --cpu, --memory, --images or --storage")
    limits = {name: parse_limit(name, text) for name, text in given.items()}
    _quotas(args).set(args.user, QuotaChange(**limits))  # type: ignore[arg-type]
    return 0


def cmd_quota_reset(args: argparse.Namespace) -> int:
    _quotas(args).set(args.user, QuotaChange(), reset=True)
    return 0


def cmd_quota_show(args: argparse.Namespace) -> int:
    quotas = _quotas(args)
    user = UserStore(quotas.state).get(args.user)
    limits, usage = quotas.limits(user.id), quotas.usage(user.id)
    rows = {
        name: {"limit": getattr(limits, name) if limits else None, "used": getattr(usage, name)}
        for name in _QUOTA_OPTIONS
    }
    if args.json:
        print_json({"user": user.name, "quota": limits is not None, **rows})
        return 0
    if limits is None:
        print(f"{user.name} is an administrator: no quota")
    for name, row in rows.items():
        limit = "unlimited" if row["limit"] is None else row["limit"]
        print(f"{name.upper():<14}: {row['used']} of {limit}")
    return 0
