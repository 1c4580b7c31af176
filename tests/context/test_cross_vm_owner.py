"""``$<vmid>.VAR`` (OpenNebula 1.4's cross-VM reference) reads only VMs of the same owner.

1.4 read CONTEXT variable NAME of VM 4 for ``$4.NAME`` whoever owned it (``context.md``, the
1.4 row of the era table); among users who do not trust each other (issue 17, point 2) another
owner's VM reads exactly as a missing one: empty. The owner is the user's id and name together.
"""

from __future__ import annotations

from pathlib import Path

from context.render import release_vm
from context.vm import User
from imagekit.state import State
from tests.context.preparing import prepare

ALICE = User(1, "alice", 1, "users")
BOB = User(2, "bob", 1, "users")


def _template(tmp_path: Path, name: str, context: str) -> Path:
    path = tmp_path / f"{name}.one"
    path.write_text(f'NAME = "{name}"\nCONTEXT = [ {context} ]\n')
    return path


def test_another_owners_vm_reads_as_a_missing_one(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    secret = _template(tmp_path, "secret", 'TOKEN = "alice-only", HOST = "$NAME"')
    kept = prepare(secret, state=state, keep=True, user=ALICE)
    peer = _template(tmp_path, "peer", f'TOKEN = "${kept.vmid}.TOKEN", HOST = "${kept.vmid}.HOST"')

    def read(user: User) -> dict[str, str]:
        return dict(prepare(peer, state=state, user=user).variables)

    assert read(ALICE) == {"TOKEN": "alice-only", "HOST": "secret", "DISK_ID": "0", "TARGET": "hda"}
    # Another user, and a user who only shares the name or only the id: exactly as a missing VM.
    missing = {"TOKEN": "", "HOST": "", "DISK_ID": "0", "TARGET": "hda"}
    assert read(BOB) == missing
    assert read(User(3, "alice", 1, "users")) == missing
    assert read(User(1, "mallory", 1, "users")) == missing
    release_vm(state, kept.vmid)
    assert read(ALICE) == missing
