"""A state with virtual network "lan" and a template for a VM on a blank 16 MiB disk (SeaBIOS finds
nothing to boot: enough for the verbs, QMP, save/restore and the process bookkeeping)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State

LAN = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.9.0.0"\nNETWORK_SIZE = "C"\n'


@dataclass(frozen=True)
class BlankLab:
    state: State
    template: Path


def make_blank_lab(tmp_path: Path) -> BlankLab:
    state = State.open(tmp_path / "state")
    NetworkStore(state).create(network_from_template(parse_template(LAN, "lan.net")))
    base = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
    template = tmp_path / "vm.one"
    template.write_text(
        f'NAME = "blank"\nMEMORY = 64\nDISK = [ SOURCE = "{base}" ]\nNIC = [ NETWORK = "lan" ]\n'
        'CONTEXT = [ NETWORK = "YES" ]\n'
    )
    return BlankLab(state, template)


def an_ec2_upload(state: State, owner: str, name: str = "base.qcow2") -> Path:
    """A blank 16 MiB qcow2 inside ``owner``'s EC2 uploads, where UploadImage keeps a cloud
    user's images (the only files a cloud user's VM may boot: cloud/ec2/core.py ``confine``)."""
    path = state.root / "ec2" / "uploads" / owner / name
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"], check=True)
    return path
