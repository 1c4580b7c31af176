"""oned.conf's ``VM_HOOK``: a command run when a VM is created, runs, shuts down, stops, ends or fails.

    VM_HOOK = [ name = "mail", on = "running", command = "/usr/local/bin/notify",
                arguments = "$VMID $NAME $NIC[IP, NETWORK=\\"lan\\"]" ]

``arguments`` is split at white space first (a ``$NIC[IP, NETWORK="lan"]`` stays one word), and
each word is then substituted by the context stage's resolver against the VM as it was created
(``$VMID``, ``$NAME``, ``$NIC[…]``, ``$TEMPLATE``…; ``opennebula-1.4.md`` §2): a value with
blanks, quotes or ``;`` (a VM name a cloud user chose) stays inside its one argument, and the
hook runs with that argv, never through a shell. The substitution happens once, at
``vm create``: a hook at DONE still sees the addresses the VM had. Hooks run in a thread with
a time limit, one VM's hooks one after another in the order of their events (a DONE hook that
removes what the CREATE hook registered must not overtake it); their output and exit status go
to the VM's ``hooks.log``; a failing hook is logged and never changes the VM.
Hooks run here, on the front end, for a VM on another host too (``cloud/hostvm.py`` fires the
same events), as 1.4's hook manager ran them; ``remote = "yes"`` is ignored: every hook runs here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from context.model import Template, Vector
from context.resolve import ExpressionError, Reference, Resolver, parse_value
from context.template import load_template
from context.vm import VirtualMachine
from imagekit.errors import CommandError, InputError
from imagekit.run import run

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0
HOOK_LOG = "hooks.log"
_BLANKS = re.compile(r"\s+")
_PENDING: list[threading.Thread] = []
_LAST: dict[int, threading.Thread] = {}  # per VM: the hook a newly fired one waits for
_FIRING = threading.Lock()


class HookEvent(StrEnum):
    CREATE = "CREATE"
    RUNNING = "RUNNING"
    SHUTDOWN = "SHUTDOWN"
    STOP = "STOP"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Hook:
    name: str
    on: HookEvent
    command: str
    arguments: str = ""


def hooks_from_template(tmpl: Template) -> tuple[Hook, ...]:
    hooks: list[Hook] = []
    for index, attr in enumerate(tmpl.all("VM_HOOK")):
        where = f"{tmpl.source}:{attr.line}:{attr.column}"
        if not isinstance(attr.value, Vector):
            raise InputError("VM_HOOK: expected a vector VM_HOOK=[on=…, command=…]", where=where)
        v = attr.value
        on = (v.get("ON") or "").upper()
        if on not in set(HookEvent):
            events = ", ".join(e.value for e in HookEvent)
            raise InputError(f"VM_HOOK.ON: expected one of {events}, got {on!r}", where=where)
        command = v.get("COMMAND") or ""
        if not command.startswith("/"):
            raise InputError(f"VM_HOOK.COMMAND: expected an absolute path, got {command!r}", where=where)
        hooks.append(Hook(v.get("NAME") or f"hook{index}", HookEvent(on), command, v.get("ARGUMENTS") or ""))
    return tuple(hooks)


def load_hooks(etc: Path) -> tuple[Hook, ...]:
    """The VM_HOOKs of ``<etc>/oned.conf`` (none without it); called by ``cloud.siteconfig`` only."""
    path = etc / "oned.conf"
    return hooks_from_template(load_template(path)) if path.is_file() else ()


def resolve_hooks(hooks: tuple[Hook, ...], vm: VirtualMachine) -> dict[str, list[list[str]]]:
    """event → [[name, command, arg…], …] with the arguments substituted for ``vm``."""
    resolver = Resolver(vm)
    out: dict[str, list[list[str]]] = {}
    for hook in hooks:
        try:
            arguments = hook_arguments(hook.arguments, resolver)
        except ExpressionError as err:
            raise InputError(
                f"VM_HOOK {hook.name!r}: ARGUMENTS: {err.message} in {err.text!r}"
                f" at character {err.position}"
            ) from None
        out.setdefault(hook.on.value, []).append([hook.name, hook.command, *arguments])
    return out


def hook_arguments(arguments: str, resolver: Resolver) -> list[str]:
    """The argv words of ``arguments``: split at blanks outside ``$…`` expressions, then each
    word substituted (a word that only held an empty variable stays, as an empty argument)."""
    words: list[list[str]] = []
    current: list[str] | None = None

    def literal(text: str) -> None:
        nonlocal current
        for n, part in enumerate(_BLANKS.split(text)):
            if n:
                current = None  # a blank ended the word
            if part:
                if current is None:
                    current = []
                    words.append(current)
                current.append(part)

    for piece in parse_value(arguments):
        if isinstance(piece, Reference):
            if current is None:
                current = []
                words.append(current)
            current.append(resolver.value(piece))
            literal(piece.eoa)
        else:
            literal(piece)
    return ["".join(word) for word in words]


def fire(event: HookEvent, hooks: Mapping[str, list[list[str]]], vmid: int, directory: Path) -> None:
    """Start the VM's hooks for ``event`` in the background (see the module docstring)."""
    for name, command, *arguments in hooks.get(event.value, []):
        with _FIRING:
            thread = threading.Thread(
                target=_run_hook,
                args=(_LAST.get(vmid), event, name, [command, *arguments], vmid, directory),
                name=f"hook-{name}",
            )
            _LAST[vmid] = thread
            _PENDING.append(thread)
            thread.start()


def wait_for_hooks(timeout: float | None = None) -> None:
    """Join the hooks this process started (the CLI would also wait for them at exit)."""
    while _PENDING:
        _PENDING.pop().join(timeout)


def _run_hook(
    after: threading.Thread | None, event: HookEvent, name: str, argv: list[str], vmid: int, directory: Path
) -> None:
    if after is not None:
        after.join()
    started = time.time()
    try:
        proc = run(argv, timeout=HOOK_TIMEOUT, check=False, step=f"hook {name}")
        status = str(proc.returncode)
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace").rstrip()
    except CommandError as err:  # not found, or over the time limit
        status, output = "error", str(err)
    except Exception as exc:  # noqa: BLE001 - a hook must never break the VM's verb
        status, output = "error", f"{type(exc).__name__}: {exc}"
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))} {event.value} {name} exit={status}"
    log.info("VM %d: hook %s", vmid, line)
    try:
        with (directory / HOOK_LOG).open("a") as out:
            out.write(line + "\n" + "".join(f"  {o}\n" for o in output.splitlines()))
    except OSError as exc:
        log.warning("VM %d: cannot write %s: %s", vmid, directory / HOOK_LOG, exc.strerror)
    with _FIRING:
        if _LAST.get(vmid) is threading.current_thread():
            del _LAST[vmid]
