"""A stand-in for mmdebstrap and the image tree's chroot, passed as ``build_image``'s runner.

``mmdebstrap`` makes a small tree (no package installed, just the files the customize step
reads); a command in the chroot succeeds without running; the step named ``fail`` fails as
``run`` reports a failure (a :class:`CommandError` with the exit status and stderr's tail). So a
build reaches the step whose failure a test is about in a second instead of minutes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import CommandError
from imagekit.run import Argv

MMDEBSTRAP_STEP = "install packages (mmdebstrap)"


@dataclass
class StandIn:
    fail: str | None = None  # the step whose command fails
    returncode: int = 1
    stderr: str = ""
    users: tuple[str, ...] = ("debian",)  # in the tree's /etc/passwd besides root
    calls: list[tuple[str, list[str]]] = field(default_factory=list)  # (step, argv) in order

    def __call__(
        self, argv: Argv, *, step: str | None = None, **_: object
    ) -> subprocess.CompletedProcess[bytes]:
        args = [os.fspath(a) for a in argv]
        self.calls.append((step or "", args))
        if step == self.fail:
            raise CommandError(args, self.returncode, self.stderr, step=step)
        if step == MMDEBSTRAP_STEP:
            self._make_tree(args)
        return subprocess.CompletedProcess(args, 0, b"", b"")

    def argv(self, step: str) -> list[str]:
        return next(args for name, args in self.calls if name == step)

    def _make_tree(self, args: list[str]) -> None:
        """mmdebstrap's positional arguments: SUITE TARGET MIRROR…; the tree goes to TARGET."""
        positional = [a for a in args[args.index("mmdebstrap") + 1 :] if not a.startswith("--")]
        root = Path(positional[1])
        for directory in ("etc/apt/sources.list.d", "usr/sbin", "var/lib/dpkg", "root"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        passwd = ["root:x:0:0:root:/root:/bin/bash"]
        passwd += [f"{u}:x:{1000 + n}:{1000 + n}::/home/{u}:/bin/bash" for n, u in enumerate(self.users)]
        (root / "etc/passwd").write_text("\n".join(passwd) + "\n")
        (root / "etc/resolv.conf").write_text("")
        (root / "var/lib/dpkg/status").write_text("")
