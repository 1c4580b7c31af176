"""The operations a core offers the verbs, one class per local core; chosen by the VM's record.

The embedded core acts on a daemonized QEMU through its pid and QMP socket
(``cloud/embedded.py``); the libvirt core on a transient domain (``cloud/libvirt.py``).
The OpenNebula core is remote and has verbs of its own (``cloud/opennebula.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cloud import embedded
from cloud.store import VmRecord

SAVED_STATE = "memory.state"


class Core(Protocol):
    def start(self, record: VmRecord, *, incoming: bool) -> tuple[int | None, int | None]: ...
    def alive(self, record: VmRecord) -> bool: ...
    def kill(self, record: VmRecord) -> None: ...
    def powerdown(self, record: VmRecord) -> None: ...
    def reset(self, record: VmRecord) -> None: ...
    def pause(self, record: VmRecord) -> None: ...
    def cont(self, record: VmRecord) -> None: ...
    def save(self, record: VmRecord, target: Path) -> None: ...


class EmbeddedCore:
    def start(self, record: VmRecord, *, incoming: bool) -> tuple[int | None, int | None]:
        saved = record.directory / SAVED_STATE
        argv = list(record.info["argv"])
        pid, start = embedded.launch(
            argv, record.directory / "qemu.pid", incoming=saved if incoming else None
        )
        password = record.info.get("vnc_password")
        if password:  # GRAPHICS PASSWD; a VM whose password cannot be set does not run
            try:
                embedded.set_vnc_password(Path(record.info["qmp"]), password)
            except BaseException:
                embedded.kill(pid, start)
                raise
        return pid, start

    def alive(self, record: VmRecord) -> bool:
        return embedded.alive(record.pid, record.pid_start)

    def kill(self, record: VmRecord) -> None:
        embedded.kill(record.pid, record.pid_start)

    def powerdown(self, record: VmRecord) -> None:
        embedded.qmp(Path(record.info["qmp"]), "system_powerdown")

    def reset(self, record: VmRecord) -> None:
        embedded.qmp(Path(record.info["qmp"]), "system_reset")

    def pause(self, record: VmRecord) -> None:
        embedded.qmp(Path(record.info["qmp"]), "stop")

    def cont(self, record: VmRecord) -> None:
        embedded.qmp(Path(record.info["qmp"]), "cont")

    def save(self, record: VmRecord, target: Path) -> None:
        embedded.save_state(Path(record.info["qmp"]), target)


def core_for(record: VmRecord) -> Core:
    if record.core == "libvirt":
        from cloud.libvirt import LibvirtCore

        return LibvirtCore(record.info["uri"])
    return EmbeddedCore()
