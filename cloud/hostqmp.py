"""QMP and the QEMU process of a VM on another host, reached over SSH (``cloud/remote.py``).

:data:`QMP_SCRIPT`, a small Python program given to ``python3 -c`` on the host, reads the QMP
commands as JSON on its stdin, talks to the VM's socket and prints the answers as one JSON
object: nothing is left on the host, and a VNC password never appears on a command line. Its
waits (a migration's end, an incoming one loaded, the block jobs ready or gone, the power button
until QEMU exits) run there, so each costs one SSH connection, not one per poll. The process
itself is found by its pidfile, and only if its command line names that pidfile (a reused pid
is another process).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud.remote import Runner
from imagekit.errors import CommandError

QMP_TIMEOUT = 60.0

# QMP on the host: the socket path is $1, the commands (a JSON list) come on stdin. Each command
# is {"execute": NAME, "arguments": {...}} or a wait: {"wait": "migration"} (query-migrate until
# it ends), {"wait": "incoming"} (until an incoming migration is loaded), {"wait": "jobs-ready"}
# and {"wait": "jobs-gone"} (the block jobs all ready, all ended), {"wait": "powerdown"}
# (the ACPI button every few seconds until QEMU exits). The answer: {"results": [...]} plus
# "error" when a command failed, or {"gone": REASON} when no QEMU listens on the socket.
QMP_SCRIPT = r"""
import json, socket, sys, time
ops = json.load(sys.stdin)
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"gone": e.strerror or str(e)}))
    sys.exit(0)
buf = bytearray()
def read():
    # recv into a buffer of our own: a makefile() reader refuses every read after one timed out,
    # and the wait for the power button times out between presses on purpose.
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("QEMU closed the QMP socket")
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)
def call(name, args=None):
    s.sendall(json.dumps({"execute": name, "arguments": args or {}}).encode() + b"\n")
    while True:
        r = read()
        if "return" in r:
            return r["return"]
        if "error" in r:
            raise RuntimeError(name + ": " + r["error"].get("desc", ""))
def until(op, check):
    deadline = time.monotonic() + op.get("timeout", 600)
    while True:
        answer = check()
        if answer is not None or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)
def ended(info):
    return info if info.get("status") in ("completed", "failed", "cancelled") else None
def loaded(info):
    return info if info.get("status") != "inmigrate" else None
def jobs(ready):
    found = call("query-block-jobs")
    done = all(j.get("ready") for j in found) if ready else not found
    return found if done else None
def powerdown(op):
    deadline = time.monotonic() + op.get("timeout", 120)
    while time.monotonic() < deadline:
        try:
            call("system_powerdown")
            s.settimeout(min(op.get("every", 10), max(deadline - time.monotonic(), 0.1)))
            while True:
                read()
        except (EOFError, ConnectionError):
            return True
        except socket.timeout:
            s.settimeout(30)
    return False
results = []
try:
    read()
    call("qmp_capabilities")
    for op in ops:
        wait = op.get("wait")
        if wait == "migration":
            results.append(until(op, lambda: ended(call("query-migrate"))))
        elif wait == "incoming":
            results.append(until(op, lambda: loaded(call("query-status"))))
        elif wait == "jobs-ready":
            results.append(until(op, lambda: jobs(True)))
        elif wait == "jobs-gone":
            results.append(until(op, lambda: jobs(False)))
        elif wait == "powerdown":
            results.append(powerdown(op))
        else:
            results.append(call(op["execute"], op.get("arguments")))
except (RuntimeError, EOFError, OSError) as e:
    print(json.dumps({"results": results, "error": str(e)}))
    sys.exit(0)
print(json.dumps({"results": results}))
"""

# Kill the QEMU whose pidfile is $1 (only if its command line names that pidfile: a reused pid
# is another process) and wait until it is gone.
_KILL = """pid=$(cat -- "$1" 2>/dev/null) || exit 0
case $pid in ''|*[!0-9]*) exit 0;; esac
tr '\\0' '\\n' < /proc/$pid/cmdline 2>/dev/null | grep -qxF -- "$1" || exit 0
kill -KILL "$pid" 2>/dev/null
n=0; while [ -d /proc/$pid ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done"""
# Whether the QEMU of pidfile $1 runs: prints "yes" or "no".
_RUNNING = """pid=$(cat -- "$1" 2>/dev/null) || { echo no; exit 0; }
case $pid in ''|*[!0-9]*) echo no; exit 0;; esac
if tr '\\0' '\\n' < /proc/$pid/cmdline 2>/dev/null | grep -qxF -- "$1"; then echo yes; else echo no; fi"""


class VmGone(CommandError):
    """No QEMU answers on the VM's QMP socket on its host."""


@dataclass(frozen=True)
class OnHost:
    """Where the VM's files and control are on one host."""

    directory: str

    @property
    def qmp(self) -> str:
        return f"{self.directory}/qmp.sock"

    @property
    def pidfile(self) -> str:
        return f"{self.directory}/qemu.pid"

    @property
    def ovmf_vars(self) -> str:
        return f"{self.directory}/OVMF_VARS.fd"


def qmp_on(
    runner: Runner, where: OnHost, ops: Sequence[dict[str, Any]], *, timeout: float = QMP_TIMEOUT
) -> list[Any]:
    """QMP commands on the VM's socket on its host (:data:`QMP_SCRIPT`); their answers."""
    done = runner.run(["python3", "-c", QMP_SCRIPT, where.qmp], input=json.dumps(list(ops)).encode(),
                      timeout=timeout, step="qmp")  # fmt: skip
    try:
        answer: dict[str, Any] = json.loads(done.stdout.decode("utf-8", "replace"))
    except ValueError:
        raise CommandError(["qmp", runner.name], 1, "no answer from the QMP helper", step="qmp") from None
    if "gone" in answer:
        raise VmGone(["qmp", runner.name], 1, f"no QEMU on the VM's socket: {answer['gone']}", step="qmp")
    if "error" in answer:
        raise CommandError(["qmp", runner.name], 1, str(answer["error"]), step="qmp")
    results: list[Any] = answer["results"]
    return results


def kill_on(runner: Runner, where: OnHost) -> None:
    runner.run(["sh", "-c", _KILL, "sh", where.pidfile], step="epilog")


def running_on(runner: Runner, where: OnHost) -> bool:
    done = runner.run(["sh", "-c", _RUNNING, "sh", where.pidfile], step="poll")
    return done.stdout.decode().strip() == "yes"
