"""The tests' view of processes they did not start themselves, read from /proc."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (the kernel's per-thread children lists), children first;
    one that ends while it is read is left out with what was below it."""
    found: list[int] = []
    pending = [pid]
    while pending:
        try:
            lists = [f.read_text() for f in Path(f"/proc/{pending.pop()}/task").glob("*/children")]
        except FileNotFoundError:
            continue
        children = [int(c) for listing in lists for c in listing.split()]
        found += children
        pending += children
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, and not a zombie waiting for a parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
