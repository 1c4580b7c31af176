"""The QMP helper that runs on a VM's host (cloud/hostqmp.py ``QMP_SCRIPT``), against a QMP
server of the test's own on a Unix socket: no QEMU, no SSH."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cloud.hostqmp import QMP_SCRIPT


def _serve(listener: socket.socket, presses_until_off: int, pressed: list[float]) -> None:
    """QEMU as QMP shows it: the greeting, then answers; the guest powers off (the socket
    closes) on the ``presses_until_off``-th ACPI button press."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as requests:
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        for line in requests:
            name = json.loads(line)["execute"]
            conn.sendall(b'{"return": {}}\n')
            if name == "system_powerdown":
                pressed.append(time.monotonic())
                # An event between presses arrives in two pieces, as a stream may deliver it.
                conn.sendall(b'{"event": "POWERDOWN", "timestamp": ')
                conn.sendall(b'{"seconds": 1, "microseconds": 0}}\n')
                if len(pressed) == presses_until_off:
                    return


def _helper(sock: Path, ops: list[dict[str, Any]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", QMP_SCRIPT, str(sock)],
        input=json.dumps(ops).encode(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_the_power_button_is_pressed_again_until_the_guest_is_off(tmp_path: Path) -> None:
    """A guest slower to power off than the interval between presses (every TCG guest): the
    helper waits out each interval and presses again. It once gave up at the first interval
    ("cannot read from timed out object"), and a remote ``vm shutdown`` failed."""
    sock = tmp_path / "qmp.sock"
    pressed: list[float] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        listener.listen(1)
        server = threading.Thread(target=_serve, args=(listener, 3, pressed))
        server.start()
        answer = _helper(sock, [{"wait": "powerdown", "timeout": 20, "every": 0.2}])
        server.join(5)
    assert answer == {"results": [True]}
    assert len(pressed) == 3 and all(b - a >= 0.15 for a, b in zip(pressed, pressed[1:], strict=False))


def test_no_qemu_on_the_socket_is_gone(tmp_path: Path) -> None:
    answer = _helper(tmp_path / "none.sock", [{"execute": "query-status"}])
    assert set(answer) == {"gone"}
