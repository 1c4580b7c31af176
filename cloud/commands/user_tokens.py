"""``imagekit user token``: a cloud user's API tokens for the build service.

imagekit user token create alice        # prints the token once: Authorization: Bearer ikb_…
imagekit user token list alice [--json]
imagekit user token revoke alice 3
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from cloud.buildservice.tokens import TokenStore
from cloud.users import UserStore
from imagekit.locations import state_dir
from imagekit.output import print_json
from imagekit.state import State


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="create a token; prints it once (only its hash is kept)")
    create.add_argument("user", metavar="ID|NAME", help="the user")
    create.set_defaults(func=cmd_create)
    listing = sub.add_parser("list", help="a user's tokens: id, first characters, creation time")
    listing.add_argument("user", metavar="ID|NAME", help="the user")
    listing.set_defaults(func=cmd_list)
    revoke = sub.add_parser("revoke", help="revoke a token: it authenticates no more")
    revoke.add_argument("user", metavar="ID|NAME", help="the user")
    revoke.add_argument("token_id", type=int, metavar="TOKEN_ID", help="the token's id (`user token list`)")
    revoke.set_defaults(func=cmd_revoke)


def _stores(args: argparse.Namespace) -> tuple[int, TokenStore]:
    state = State.open(state_dir(args.state))
    return UserStore(state).get(args.user).id, TokenStore(state)


def cmd_create(args: argparse.Namespace) -> int:
    user_id, tokens = _stores(args)
    token = tokens.create(user_id)
    if args.json:
        print_json({"token": token})
    else:
        print(token)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    user_id, tokens = _stores(args)
    found = tokens.list(user_id)
    if args.json:
        print_json([{"id": t.id, "prefix": t.prefix, "created": t.created} for t in found])
        return 0
    print(f"{'ID':<4}{'TOKEN':<14}CREATED")
    for t in found:
        created = datetime.fromtimestamp(t.created, UTC).replace(microsecond=0).isoformat()
        print(f"{t.id:<4}{t.prefix + '…':<14}{created}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    user_id, tokens = _stores(args)
    tokens.revoke(user_id, args.token_id)
    return 0
