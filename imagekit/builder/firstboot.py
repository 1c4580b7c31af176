"""Files the builder adds to every image: first-boot units and the fallback network config.

- ``imagekit-growroot.service`` grows the root partition (growpart) and its ext4 filesystem
  (resize2fs) to the disk on the first boot, so a 3 GiB image fills a 40 GiB volume.
- ``imagekit-ssh-keygen.service`` creates SSH host keys missing because the build removed
  them; every VM from the image thus gets its own keys, with or without cloud-init.
"""

from __future__ import annotations

import os
from pathlib import Path

GROWROOT_SCRIPT = """#!/bin/sh
# Grow the root partition and filesystem to the end of the disk (imagekit, first boot).
set -eu
dev=$(readlink -f "$(findmnt -no SOURCE /)")
name=${dev##*/}
part=$(cat "/sys/class/block/$name/partition")
disk=/dev/$(basename "$(readlink -f "/sys/class/block/$name/..")")
rc=0
growpart "$disk" "$part" || rc=$?
# growpart exits 1 when there is nothing to grow.
[ "$rc" -le 1 ] || exit "$rc"
resize2fs "$dev"
mkdir -p /var/lib/imagekit
touch /var/lib/imagekit/root-grown
"""

GROWROOT_UNIT = """[Unit]
Description=Grow the root partition and filesystem to the disk (imagekit, first boot)
ConditionPathExists=!/var/lib/imagekit/root-grown
# No default dependencies: they order a unit after sysinit.target, while cloud-init.service
# runs before sysinit.target; "Before=cloud-init.service" would then be a cycle, and systemd
# breaks it by dropping cloud-init's main stage.
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=sysinit.target cloud-init.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/imagekit-growroot

[Install]
WantedBy=multi-user.target
"""

SSH_KEYGEN_UNIT = """[Unit]
Description=Generate missing SSH host keys (imagekit, first boot)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
After=local-fs.target cloud-init.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target ssh.service
"""

# Without cloud-init, eth0 (net.ifnames=0) asks DHCP, for a cloud without a context. The context
# agent configures addresses from the CONTEXT CD instead and rewrites this file with those
# interfaces "manual" (imagekit-context.sh, leave_to_context): ifup and ifdown would otherwise
# wait about a minute each for a DHCP server on a network that has none.
INTERFACES_DHCP = """# written by imagekit
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
"""
INTERFACES_LOOPBACK = """# written by imagekit; cloud-init writes interfaces.d/50-cloud-init
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
"""

# cloud-init's locale module fails in a minbase image without the locales package.
CLOUD_INIT_CFG = """# written by imagekit
locale: C.UTF-8
"""


def write(root: Path, path: str, content: str, mode: int = 0o644) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.write_text(content)
    dest.chmod(mode)


def enable(root: Path, unit: str, *targets: str) -> None:
    for target in targets:
        link = root / "etc/systemd/system" / f"{target}.wants" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(f"/etc/systemd/system/{unit}", link)


def install_first_boot(root: Path, *, cloud_init: bool) -> None:
    write(root, "/usr/local/sbin/imagekit-growroot", GROWROOT_SCRIPT, 0o755)
    write(root, "/etc/systemd/system/imagekit-growroot.service", GROWROOT_UNIT)
    enable(root, "imagekit-growroot.service", "multi-user.target")
    write(root, "/etc/systemd/system/imagekit-ssh-keygen.service", SSH_KEYGEN_UNIT)
    enable(root, "imagekit-ssh-keygen.service", "multi-user.target", "ssh.service")
    write(root, "/etc/network/interfaces", INTERFACES_LOOPBACK if cloud_init else INTERFACES_DHCP)
    if cloud_init:
        write(root, "/etc/cloud/cloud.cfg.d/90-imagekit.cfg", CLOUD_INIT_CFG)
