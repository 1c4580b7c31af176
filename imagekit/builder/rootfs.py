"""The package-install stage: a Debian root tree from ``mmdebstrap``, the part worth caching.

Everything that decides what this stage produces is in :class:`PackageStage`, so its
:meth:`~PackageStage.key` is the cache key: suite, architecture, apt sources, the package set
(recipe packages, groups mapped to Debian, kernel, boot and agent packages), pre-commands and
the mirror's snapshot identity. Files, users and post-commands come later (``customize.py``).

    stage = plan_stage(recipe, agent_packages=AGENT_PACKAGES)
    bootstrap(stage, root, work)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from imagekit import environment
from imagekit.errors import CommandError, DataError
from imagekit.recipe.buildable import BUILT_ARCHES, GROUPS, KERNELS, debian_suite
from imagekit.recipe.model import Recipe, Repository
from imagekit.run import Runner, run

from .sandbox import Sandbox, check_tree, confined_hook, explain
from .sources import content_bytes, fetch

# Bump when the stage's output changes for the same inputs (new hooks, other defaults).
STAGE_VERSION = 3
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# Private mount and PID namespaces for everything that runs in the image's tree: mounts made
# there are invisible to the host and go away with the namespace, and when the wrapper is killed
# (--kill-child) the namespace's init dies and the kernel kills every process left in it.
NAMESPACES = ("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child")
# What every image needs to boot from our disk layout and be reachable: init, udev, an
# initramfs (zstd-compressed), DHCP, SSH, and growpart + resize2fs for the first-boot grow;
# dbus so that systemd-logind runs and powers off on the ACPI power button (`vm shutdown`).
BOOT_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "initramfs-tools",
    "zstd",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "openssh-server",
    "cloud-guest-utils",
    "e2fsprogs",
)
# linux-image's postinst makes an initramfs (its /etc/kernel/postinst.d hook), and the
# initramfs-tools trigger at the end of the same install makes it again, for the packages
# configured after the kernel: 5 s of a cold build thrown away. With INITRD=No the hook makes
# none (nor does the trigger: there is none to update, and linux-update-symlinks links none),
# and this customize hook makes each kernel's once, after every package is configured, then
# links it as the postinst would have: the same tree, the initramfs made once.
ONE_INITRAMFS_ENV = {"INITRD": "No"}
_ONE_INITRAMFS = """\
[ -x /usr/sbin/update-initramfs ] || exit 0
for v in $(linux-version list | linux-version sort); do
    [ ! -e "/boot/initrd.img-$v" ] || continue
    update-initramfs -c -k "$v"
    INITRD=Yes linux-update-symlinks install "$v" "/boot/vmlinuz-$v"
done
"""
ONE_INITRAMFS_HOOK = f'chroot "$1" /bin/sh -ec {shlex.quote(_ONE_INITRAMFS)}'
# openssh-server's postinst makes the host keys that are missing (RSA 3072: 0.3-0.7 s), which
# customize.clean removes from every image (each VM makes its own at first boot): empty files
# in their place, made before the author's pre-commands, are removed the same way.
NO_HOST_KEYS_HOOK = (
    'chroot "$1" /bin/sh -ec \'mkdir -p /etc/ssh; '
    'for t in rsa ecdsa ed25519; do : > "/etc/ssh/ssh_host_${t}_key"; done\''
)
# cloud-init's OpenNebula datasource sources context.sh as `nobody` through `sudo -u nobody
# bash -e`; Debian's cloud-init only Recommends sudo, and without it the datasource fails
# ("Error processing context.sh") and cloud-init falls back to DataSourceNone.
CLOUD_INIT_PACKAGES = ("cloud-init", "cloud-guest-utils", "sudo")


@dataclass(frozen=True)
class PackageStage:
    suite: str
    arch: str
    sources: tuple[str, ...]  # one-line apt sources, the Debian mirror first
    packages: tuple[str, ...]  # sorted, without duplicates
    pre_commands: tuple[tuple[str, str], ...]  # (name, script) in recipe order

    def key(self, snapshot: str, source_date_epoch: int) -> str:
        """The content address of this stage's output for the mirror state ``snapshot``.

        ``SOURCE_DATE_EPOCH`` is part of it: the initramfs and package scripts' files carry it.
        """
        material = {
            "version": STAGE_VERSION,
            "suite": self.suite,
            "arch": self.arch,
            "sources": list(self.sources),
            "packages": list(self.packages),
            "pre_commands": [list(c) for c in self.pre_commands],
            "snapshot": snapshot,
            "source_date_epoch": source_date_epoch,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def summary(self) -> str:
        return f"{self.suite}/{self.arch}, {len(self.packages)} packages"


def plan_stage(
    recipe: Recipe,
    *,
    agent_packages: tuple[str, ...] = (),
    mirror: str = DEFAULT_MIRROR,
    security_mirror: str = DEFAULT_SECURITY_MIRROR,
) -> PackageStage:
    """What to bootstrap for ``recipe``, which ``check_buildable`` has passed (``build_image``
    calls it first, with the build's firmware)."""
    suite = debian_suite(recipe)
    arch = BUILT_ARCHES[recipe.os.arch]
    packages = {KERNELS[recipe.kernel_flavour], *BOOT_PACKAGES}
    for package in recipe.packages:
        packages.update(expand_package(package.name))
    if recipe.context_agent.wants_imagekit():
        packages.update(agent_packages)
    if recipe.context_agent.wants_cloud_init():
        packages.update(CLOUD_INIT_PACKAGES)
    sources = [
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security_mirror} {suite}-security main",
    ]
    sources += [source_line(repo, suite) for repo in recipe.repositories]
    pre = tuple(
        (c.name, content_bytes(c.source, c.script, what=f"precommand {c.name!r}").decode("utf-8", "replace"))
        for c in recipe.pre_commands
    )
    return PackageStage(suite, arch, tuple(sources), tuple(sorted(packages)), pre)


def expand_package(name: str) -> tuple[str, ...]:
    """A recipe package entry as Debian package names (``@group`` mapped: ``check_buildable``
    refused a group with no Debian equivalent)."""
    name = name.strip()
    if not name.startswith("@"):
        return (name,)
    return GROUPS[name[1:].strip().lower()]


def source_line(repo: Repository, suite: str) -> str:
    """``deb [trusted=yes] URL SUITE main`` for a bare URL; a URL followed by words is kept as is.

    ``signed: false`` marks the repository trusted, since there is no key to check it with
    (``check_buildable`` refused a mirrorlist-only repository and other URL schemes).
    """
    words = repo.url.split()
    rest = words[1:] or [suite, "main"]
    options = "" if repo.signed else " [trusted=yes]"
    return f"deb{options} {words[0]} {' '.join(rest)}"


def source_file_name(repo: Repository) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in repo.name)
    return f"imagekit-{safe}.list"


def bootstrap(
    stage: PackageStage,
    root: Path,
    work: Path,
    *,
    recipe_repos: tuple[Repository, ...],
    env: Mapping[str, str] | None = None,
    runner: Runner = run,
    sandbox: Sandbox | None = None,
) -> None:
    """Run mmdebstrap into the empty directory ``root``; hook scripts go to ``work``.

    mmdebstrap runs in private mount and PID namespaces, so the /proc, /sys and /dev mounts it
    makes inside the tree and every process it starts vanish with it, even when it is killed.
    With ``sandbox``, it runs as the build user in ``--mode=unshare`` under the sandbox's
    limits, the pre-commands confined as post-commands are (no network); the tree's owners are
    then shifted back to the image's and the tree checked before the builder touches it.
    """
    hooks = [f"--essential-hook={NO_HOST_KEYS_HOOK}"]
    # Recipe repositories go to their own list files so that non-persisted ones can be removed
    # after the build; the setup hook writes them before apt's first update.
    for repo, line in zip(recipe_repos, stage.sources[3:], strict=True):
        listing = work / source_file_name(repo)
        listing.write_text(line + "\n")
        hooks.append(f"--setup-hook=copy-in {shlex.quote(str(listing))} /etc/apt/sources.list.d/")
    for index, (name, script) in enumerate(stage.pre_commands, 1):
        path = work / f"pre-{index:02d}.sh"
        path.write_text(script)
        fail = shlex.quote(f"imagekit: precommand {name!r} failed")
        run_it = (
            f'chroot "$1" /bin/sh -e < {shlex.quote(str(path))}' if sandbox is None else confined_hook(path)
        )
        hooks.append(f"--essential-hook={run_it} || {{ echo {fail} >&2; exit 1; }}")
    argv = [
        *(NAMESPACES if sandbox is None else ()),
        "mmdebstrap",
        "--mode=root" if sandbox is None else "--mode=unshare",
        "--variant=minbase",
        f"--arch={stage.arch}",
        "--format=directory",
        "--skip=cleanup/apt/lists",
        '--aptopt=Acquire::Retries "3"',
        f"--include={','.join(stage.packages)}",
        *hooks,
        f"--customize-hook={ONE_INITRAMFS_HOOK}",
        stage.suite,
        str(root),
        *stage.sources[:3],
    ]
    # SOURCE_DATE_EPOCH (in ``env``) reaches dpkg and the package scripts through mmdebstrap:
    # initramfs-tools clamps its cpio's times to it, mmdebstrap drops ldconfig's aux-cache.
    step = "install packages (mmdebstrap)"
    full_env = {"DEBIAN_FRONTEND": "noninteractive", **ONE_INITRAMFS_ENV, **(env or {})}
    if sandbox is None:
        runner(argv, step=step, env=full_env)
        check_initramfs(root)
        return
    os.chown(root, sandbox.user.subuid, sandbox.user.subgid)  # the namespace's root fills it
    try:
        runner(sandbox.wrap(argv, watch=root), step=step, env=full_env)
    except CommandError as err:
        raise explain(err, step=step) from None
    finally:
        sandbox.unshift(root)
    check_tree(root)
    check_initramfs(root)


def check_initramfs(root: Path) -> None:
    """Every kernel in the tree has its initramfs (made by ``ONE_INITRAMFS_HOOK``)."""
    if not (root / "usr/sbin/update-initramfs").exists():
        return
    for kernel in sorted((root / "boot").glob("vmlinuz-*")):
        version = kernel.name.removeprefix("vmlinuz-")
        if not (root / "boot" / f"initrd.img-{version}").is_file():
            raise DataError(f"install packages: kernel {version} has no initramfs in the package stage")


@dataclass(frozen=True)
class ArchiveState:
    """What the Debian archive looked like: an identity for cache keys and build inputs, and
    the newest ``InRelease`` date (the default ``SOURCE_DATE_EPOCH``; None when unknown)."""

    identity: str
    date: int | None


def archive_state(stage: PackageStage, *, timeout: float = 15.0) -> ArchiveState:
    """Identity of the archive state: a hash over the ``InRelease`` files of the Debian sources.

    A point release or a security update changes it, so the cached stage is rebuilt exactly
    when apt would install something different. ``IMAGEKIT_SNAPSHOT`` pins it instead (for
    offline rebuilds from the cache, or a snapshot.debian.org mirror whose state never moves);
    a snapshot.debian.org timestamp there (``20250520T000000Z``) also gives the date.
    """
    pinned = environment.current().snapshot
    if pinned:
        return ArchiveState(f"pinned:{pinned}", snapshot_date(pinned))
    digest = hashlib.sha256()
    dates: list[int] = []
    for line in stage.sources[:3]:
        _, url, suite, *_ = line.split()
        release = fetch_release(f"{url.rstrip('/')}/dists/{suite}/InRelease", timeout=timeout)
        digest.update(release)
        if (date := release_date(release)) is not None:
            dates.append(date)
    return ArchiveState("inrelease:" + digest.hexdigest()[:32], max(dates, default=None))


def release_date(release: bytes) -> int | None:
    """The ``Date:`` field of a (signed) Release file as a Unix time; None without one."""
    for line in release.decode("utf-8", "replace").splitlines():
        if line.startswith("Date:"):
            try:
                return int(parsedate_to_datetime(line[5:].strip()).timestamp())
            except (TypeError, ValueError):
                return None
    return None


def snapshot_date(text: str) -> int | None:
    """``20250520T000000Z`` or ``20250520`` (snapshot.debian.org's names) as a Unix time."""
    for pattern in ("%Y%m%dT%H%M%SZ", "%Y%m%d"):
        try:
            return int(datetime.strptime(text, pattern).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    return None


def fetch_release(url: str, *, timeout: float) -> bytes:
    return fetch(url, what="Debian mirror (the archive state the build records)", timeout=timeout)
