"""Per-user API tokens for the build service (``build_tokens``, migration 0009).

    token = TokenStore(state).create(user.id)     # "ikb_<id>_<secret>": shown once
    user_id = TokenStore(state).owner(token)      # None when unknown or revoked

Only the SHA-256 of a token is stored (a token is 32 random bytes, so a fast hash is enough:
nothing to guess); lists show the id and the first characters only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from imagekit.errors import InputError
from imagekit.state import State

PREFIX = "ikb_"


@dataclass(frozen=True)
class Token:
    id: int
    owner_id: int
    prefix: str
    created: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def create(self, owner_id: int) -> str:
        token = PREFIX + secrets.token_urlsafe(32)
        with self.state.transaction() as db:
            db.execute(
                "INSERT INTO build_tokens (owner_id, prefix, digest, created) VALUES (?, ?, ?, ?)",
                (owner_id, token[: len(PREFIX) + 6], _digest(token), time.time()),
            )
        return token

    def list(self, owner_id: int) -> list[Token]:
        with self.state.read() as db:
            rows = db.execute(
                "SELECT * FROM build_tokens WHERE owner_id = ? ORDER BY id", (owner_id,)
            ).fetchall()
        return [Token(r["id"], r["owner_id"], r["prefix"], r["created"]) for r in rows]

    def revoke(self, owner_id: int, token_id: int) -> None:
        with self.state.transaction() as db:
            if not db.execute(
                "DELETE FROM build_tokens WHERE id = ? AND owner_id = ?", (token_id, owner_id)
            ).rowcount:
                raise InputError(f"no token {token_id} of this user")

    def owner(self, token: str) -> int | None:
        """The id of the user ``token`` belongs to, or None."""
        if not token.startswith(PREFIX):
            return None
        digest = _digest(token)
        with self.state.read() as db:
            row = db.execute(
                "SELECT owner_id, digest FROM build_tokens WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row["digest"], digest):
            return None
        return int(row["owner_id"])
