"""The cloud core's VM states as EC2 instance states (code and name).

The map is OpenNebula econe's ``ONE_STATES`` as 3.x–5.x fixed it (``stop``/``susp`` → stopped,
``save`` → stopping, ``clea`` → shutting-down), keyed by both the short state ``onevm list``
shows and the long name. 1.4 mapped ``prol`` and ``save`` to a state its table lacked, so
listing such a VM failed; here a state the map does not know is ``pending``, never an error.
"""

from __future__ import annotations

from enum import Enum


class InstanceState(Enum):
    PENDING = (0, "pending")
    RUNNING = (16, "running")
    SHUTTING_DOWN = (32, "shutting-down")
    TERMINATED = (48, "terminated")
    STOPPING = (64, "stopping")
    STOPPED = (80, "stopped")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


_S = InstanceState
_FROM_CORE: dict[str, InstanceState] = {
    "init": _S.PENDING,
    "pend": _S.PENDING,
    "pending": _S.PENDING,
    "hold": _S.PENDING,
    "prol": _S.PENDING,
    "prolog": _S.PENDING,
    "stop": _S.STOPPED,
    "stopped": _S.STOPPED,
    "susp": _S.STOPPED,
    "suspended": _S.STOPPED,
    "poweroff": _S.STOPPED,
    "save": _S.STOPPING,
    "save_stop": _S.STOPPING,
    "save_suspend": _S.STOPPING,
    "boot": _S.RUNNING,
    "runn": _S.RUNNING,
    "running": _S.RUNNING,
    "active": _S.RUNNING,
    "migr": _S.RUNNING,
    "migrate": _S.RUNNING,
    "epil": _S.SHUTTING_DOWN,
    "epilog": _S.SHUTTING_DOWN,
    "shut": _S.SHUTTING_DOWN,
    "shutdown": _S.SHUTTING_DOWN,
    "clea": _S.SHUTTING_DOWN,
    "cleanup": _S.SHUTTING_DOWN,
    "done": _S.TERMINATED,
    "fail": _S.TERMINATED,
    "failed": _S.TERMINATED,
    "dele": _S.TERMINATED,
    "unkn": _S.TERMINATED,
    "unknown": _S.TERMINATED,
}


def ec2_state(core_state: str) -> InstanceState:
    """The EC2 state for a core state name (any case); ``pending`` for one it does not know."""
    return _FROM_CORE.get(core_state.strip().lower(), InstanceState.PENDING)
