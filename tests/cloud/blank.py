"""A state with virtual network "lan" and a template for a VM on a stand-in 16 MiB disk whose boot
sector only stops the CPU: enough for the verbs, QMP, save/restore and the process bookkeeping.

A disk with nothing to boot is no cheaper stand-in: SeaBIOS goes on to the NIC's iPXE, which
polls the network at a full core for as long as the VM lives (8 s of CPU in 10 s, measured); a
halted one takes none (0.1 s). Its console is one known line; like a blank disk's firmware, it
ignores the ACPI power button."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State

# 16-bit code BIOS runs at 0x7c00: print STAND_IN_LINE on COM1 (0x3f8), then cli; hlt for good.
STAND_IN_LINE = "imagekit stand-in disk: CPU halted\r\n"
_PRINT_THEN_HALT = bytes.fromhex(
    "fa fc 31c0 8ed8 be177c"  # cli; cld; ds = 0; si = the line (0x7c00 + 0x17, after this code)
    "baf803 ac 84c0 7403 ee ebf8"  # dx = COM1; next: lodsb; if al == 0 goto halt; out dx, al; goto next
    "f4 ebfd"  # halt: hlt; goto halt (an NMI would wake it)
)
HALT_SECTOR = (_PRINT_THEN_HALT + STAND_IN_LINE.encode() + b"\0").ljust(510, b"\0") + b"\x55\xaa"
LAN = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.9.0.0"\nNETWORK_SIZE = "C"\n'


@dataclass(frozen=True)
class BlankLab:
    state: State
    template: Path


def make_blank_lab(tmp_path: Path) -> BlankLab:
    state = State.open(tmp_path / "state")
    NetworkStore(state).create(network_from_template(parse_template(LAN, "lan.net")))
    base = halting_disk(tmp_path / "blank.qcow2")
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
    return halting_disk(path)


def halting_disk(path: Path, size_mib: int = 16) -> Path:
    """A qcow2 of ``size_mib`` whose first sector halts the guest's CPU (see the docstring)."""
    raw = path.with_name(path.name + ".raw")
    with raw.open("wb") as disk:
        disk.write(HALT_SECTOR)
        disk.truncate(size_mib << 20)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], check=True)
    raw.unlink()
    return path
