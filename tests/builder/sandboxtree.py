"""A tiny root tree for sandbox tests: bash and a few host tools with their libraries (from
``ldd``), so the namespaces are tested in seconds without an image build."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagekit.builder.sandbox import Sandbox

TOOLS = ("bash", "sh", "cat", "touch", "mkdir", "head", "ln", "chmod", "cp", "id", "sleep", "mount", "mknod",
         "ls", "rm", "stat", "chroot", "unshare", "true", "dd", "rmdir", "chown", "setpriv",
         "readlink")  # fmt: skip


def _copy(path: Path, tree: Path) -> None:
    dest = tree / str(path.resolve()).lstrip("/")
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.resolve(), dest)
    link = tree / str(path).lstrip("/")
    if link != dest and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())


def make_tree(tree: Path) -> None:
    for name in ("proc", "dev", "sys", "tmp", "etc", "mnt", "root", "usr/bin", "usr/lib", "usr/lib64"):
        (tree / name).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (tree / name).symlink_to(f"usr/{name}" if name != "sbin" else "usr/bin")
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        binary = Path(found)
        (tree / "usr/bin" / tool).write_bytes(binary.resolve().read_bytes())
        (tree / "usr/bin" / tool).chmod(0o755)
        libs = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        for line in libs.splitlines():
            words = line.split()
            paths = [w for w in words if w.startswith("/")]
            for lib in paths[:1]:
                _copy(Path(lib), tree)


@contextmanager
def sandboxed_tree(sandbox: Sandbox) -> Iterator[Path]:
    """A workspace directory (directly under /tmp: pytest's are 0700) with ``root`` shifted."""
    base = Path(tempfile.mkdtemp(prefix="imagekit-sandbox-test-"))
    try:
        make_tree(base / "root")
        sandbox.prepare_workspace(base)
        sandbox.shift(base / "root")
        yield base / "root"
    finally:
        shutil.rmtree(base)
