"""Every test file is collected: pytest's default norecursedirs once dropped all of tests/build/."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_every_test_file_is_collected() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    collected = {line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line}
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")}
    assert on_disk - collected == set()
    assert "tests/build/test_images.py" in collected
