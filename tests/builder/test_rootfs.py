from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from pathlib import Path

import pytest

from imagekit.builder import rootfs
from imagekit.builder.sources import content_bytes
from imagekit.errors import DataError, InputError, NetworkError
from imagekit.recipe.buildable import check_buildable
from imagekit.recipe.model import (
    Command,
    ContentSource,
    ContextAgent,
    File,
    OperatingSystem,
    Package,
    Recipe,
    Repository,
    SourceFormat,
)

BASE = Recipe(
    name="t",
    os=OperatingSystem("Debian", "12"),
    source_path=Path("t.appl"),
    source_format=SourceFormat.APPL,
    packages=(Package("openssh-server"),),
    post_commands=(Command("motd", ContentSource.RAW, "echo hi > /etc/motd"),),
)
SNAPSHOT = "inrelease:abc"


def key(recipe: Recipe) -> str:
    return rootfs.plan_stage(recipe, agent_packages=("iproute2",)).key(SNAPSHOT, 1700000000)


def test_post_commands_files_and_users_do_not_change_the_key() -> None:
    changed = dataclasses.replace(
        BASE,
        post_commands=(Command("other", ContentSource.RAW, "touch /x"),),
        files=(File("/etc/x", ContentSource.RAW, "x"),),
        hostname="elsewhere",
        root_password="secret",
    )
    assert key(changed) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"packages": (Package("openssh-server"), Package("curl"))},
        {"pre_commands": (Command("p", ContentSource.RAW, "true"),)},
        {"kernel_flavour": "generic"},
        {"context_agent": ContextAgent.CLOUD_INIT},
        {"repositories": (Repository("r", url="http://example.org/debian", signed=False),)},
        {"os": OperatingSystem("Debian", "11")},
    ],
)
def test_what_the_package_stage_installs_changes_the_key(change: dict[str, object]) -> None:
    assert key(dataclasses.replace(BASE, **change)) != key(BASE)  # type: ignore[arg-type]


def test_snapshot_and_source_date_epoch_change_the_key() -> None:
    """Package scripts stamp files with SOURCE_DATE_EPOCH, so a cached tree is only reused for it."""
    stage = rootfs.plan_stage(BASE)
    assert stage.key("a", 1) != stage.key("b", 1)
    assert stage.key("a", 1) != stage.key("a", 2)


def test_package_set_has_kernel_boot_and_agent_packages() -> None:
    stage = rootfs.plan_stage(BASE, agent_packages=("iproute2",))
    assert stage.suite == "bookworm" and stage.arch == "amd64"
    assert {"linux-image-cloud-amd64", "openssh-server", "cloud-guest-utils", "iproute2"} <= set(
        stage.packages
    )
    assert list(stage.packages) == sorted(set(stage.packages))
    generic = rootfs.plan_stage(
        dataclasses.replace(BASE, kernel_flavour="generic", context_agent=ContextAgent.NONE),
        agent_packages=("iproute2",),
    )
    assert "linux-image-amd64" in generic.packages and "iproute2" not in generic.packages
    cloud = rootfs.plan_stage(dataclasses.replace(BASE, context_agent=ContextAgent.BOTH))
    assert "cloud-init" in cloud.packages


@pytest.mark.parametrize("agent", [ContextAgent.CLOUD_INIT, ContextAgent.BOTH])
def test_cloud_init_gets_what_its_opennebula_datasource_runs(agent: ContextAgent) -> None:
    """cloud-init reads a CONTEXT CD by running context.sh through ``sudo -u nobody bash -e``.

    canonical/cloud-init (22.4.2, Debian 12's, and HEAD 0167c1b alike)
    cloudinit/sources/DataSourceOpenNebula.py: DEFAULT_PARSEUSER = "nobody" (:28) is the
    parseuser unless configured (:51-53); switch_user_cmd returns ["sudo", "-u", user] (:303-304)
    and parse_shell_config prefixes it to ["bash", "-e"] whenever asuser is set (:314, :369-370);
    a failure is "Error processing context.sh" (:446-449), and cloud-init falls back to
    DataSourceNone. Debian's cloud-init only Recommends sudo, and the minbase images get no
    Recommends, so the builder must name it (BASE itself brings no sudo).
    """
    plain = rootfs.plan_stage(dataclasses.replace(BASE, context_agent=ContextAgent.NONE))
    assert "sudo" not in plain.packages
    stage = rootfs.plan_stage(dataclasses.replace(BASE, context_agent=agent))
    assert {"cloud-init", "sudo"} <= set(stage.packages)


def test_groups_map_to_debian_or_fail_by_name() -> None:
    assert rootfs.expand_package("@core") == ()
    assert "sudo" in rootfs.expand_package("@base")
    with pytest.raises(InputError, match="packages.@gnome-desktop: group '@gnome-desktop' has no Debian"):
        check_buildable(dataclasses.replace(BASE, packages=(Package("@gnome-desktop"),)))


def test_non_debian_recipes_are_refused() -> None:
    with pytest.raises(InputError, match="cannot build"):
        rootfs.plan_stage(dataclasses.replace(BASE, os=OperatingSystem("Fedora", "16")))


def test_source_lines() -> None:
    signed = Repository("a", url="http://example.org/debian")
    assert rootfs.source_line(signed, "bookworm") == "deb http://example.org/debian bookworm main"
    unsigned = Repository("b", url="http://example.org/flat ./", signed=False)
    assert rootfs.source_line(unsigned, "bookworm") == "deb [trusted=yes] http://example.org/flat ./"
    for repo, refusal in (
        (Repository("c", mirrorlist="http://m"), "repositories.c: mirrorlist is a yum feature"),
        (Repository("d", url="gopher://x"), "repositories.d: expected an http"),
    ):
        with pytest.raises(InputError, match=refusal):  # refused before any work, by the gate
            check_buildable(dataclasses.replace(BASE, repositories=(repo,)))


def test_pinned_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", "20250520T000000Z")
    state = rootfs.archive_state(rootfs.plan_stage(BASE))
    assert state == rootfs.ArchiveState("pinned:20250520T000000Z", 1747699200)
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", "my-mirror-v3")
    assert rootfs.archive_state(rootfs.plan_stage(BASE)).date is None


def test_release_date_is_the_inrelease_date_field() -> None:
    signed = (
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nSuite: stable\n"
        b"Date: Sat, 17 May 2025 09:31:08 UTC\nValid-Until: Sat, 24 May 2025 09:31:08 UTC\n"
    )
    assert rootfs.release_date(signed) == 1747474268
    assert rootfs.release_date(b"Origin: Debian\n") is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unfetchable_url_is_an_error_naming_it() -> None:
    """A refused connection is the network's fault, not the recipe's (issue 22, point 6)."""
    url = f"http://127.0.0.1:{_closed_port()}/motd"
    with pytest.raises(NetworkError, match=f"file /etc/motd: cannot fetch {url}: .*Connection refused"):
        content_bytes(ContentSource.URL, url, what="file /etc/motd", timeout=5)


def test_content_sources(tmp_path: Path) -> None:
    assert content_bytes(ContentSource.RAW, "x", what="f") == b"x"
    assert content_bytes(ContentSource.BASE64, "aGVs\nbG8=", what="f") == b"hello"
    (tmp_path / "l").write_bytes(b"\x00\x01")
    assert content_bytes(ContentSource.LOCAL, str(tmp_path / "l"), what="f") == b"\x00\x01"
    with pytest.raises(InputError, match="not valid base64"):
        content_bytes(ContentSource.BASE64, "***", what="f")
    with pytest.raises(InputError, match="cannot read"):
        content_bytes(ContentSource.LOCAL, str(tmp_path / "missing"), what="f")


def _chroot_with(root: Path, programs: dict[str, str]) -> Path:
    """A chroot holding the host's dash and mkdir (with the libraries they load) and the
    given programs as shell scripts."""
    for binary in ("/bin/sh", "/bin/mkdir"):
        real = Path(binary).resolve()
        for needed in (real, *_libraries(real)):
            target = root / str(needed).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(needed.read_bytes())
            target.chmod(0o755)
        (root / "bin").mkdir(exist_ok=True)
        if not (root / binary.lstrip("/")).exists():
            (root / binary.lstrip("/")).symlink_to(real)
    (root / "usr" / "sbin").mkdir(parents=True, exist_ok=True)
    for name, script in programs.items():
        (root / "usr" / "sbin" / name).write_text("#!/bin/sh\n" + script)
        (root / "usr" / "sbin" / name).chmod(0o755)
    (root / "boot").mkdir()
    return root


def _libraries(binary: Path) -> list[Path]:
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [Path(word) for line in listed.splitlines() for word in line.split() if word.startswith("/")]


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_initramfs_is_made_once_per_kernel_after_the_install_and_linked(tmp_path: Path) -> None:
    """The kernel's own hook is told not to make one (INITRD=No, as linux-update-symlinks is):
    the customize hook makes each kernel's that is missing, in version order, and links it as
    the kernel's postinst would (/etc/kernel/postinst.d/initramfs-tools, linux-update-symlinks)."""
    root = _chroot_with(
        tmp_path / "root",
        {
            "linux-version": 'case "$1" in list) echo 6.1.0-9; echo 6.1.0-10; echo 6.1.0-8;;\n'
            'sort) while read -r v; do echo "$v"; done | { read -r a; read -r b; read -r c; '
            'echo "$c"; echo "$a"; echo "$b"; };; esac\n',
            "update-initramfs": 'echo "update-initramfs $*" >> /calls; : > "/boot/initrd.img-$3"\n',
            "linux-update-symlinks": 'echo "INITRD=$INITRD linux-update-symlinks $*" >> /calls\n',
        },
    )
    (root / "boot" / "initrd.img-6.1.0-9").write_text("made already")
    env = {**rootfs.ONE_INITRAMFS_ENV, "PATH": "/bin:/usr/sbin:/usr/bin"}
    subprocess.run(["/bin/sh", "-c", rootfs.ONE_INITRAMFS_HOOK, "sh", str(root)], env=env, check=True)
    assert (root / "calls").read_text().splitlines() == [
        "update-initramfs -c -k 6.1.0-8",
        "INITRD=Yes linux-update-symlinks install 6.1.0-8 /boot/vmlinuz-6.1.0-8",
        "update-initramfs -c -k 6.1.0-10",
        "INITRD=Yes linux-update-symlinks install 6.1.0-10 /boot/vmlinuz-6.1.0-10",
    ]
    assert rootfs.ONE_INITRAMFS_ENV == {"INITRD": "No"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_no_host_keys_are_made_into_the_stage(tmp_path: Path) -> None:
    """Empty files stand where openssh-server's postinst would make keys (it makes only those
    missing); customize.clean removes them as it removed the keys."""
    root = _chroot_with(tmp_path / "root", {})
    subprocess.run(
        ["/bin/sh", "-c", rootfs.NO_HOST_KEYS_HOOK, "sh", str(root)],
        env={"PATH": "/bin:/usr/sbin:/usr/bin"},
        check=True,
    )
    keys = sorted(p.name for p in (root / "etc" / "ssh").iterdir())
    assert keys == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_rsa_key"]
    assert all((root / "etc" / "ssh" / k).stat().st_size == 0 for k in keys)


def test_the_stage_hooks_come_before_the_authors_and_the_kernel_hook_is_off(tmp_path: Path) -> None:
    stage = rootfs.plan_stage(
        dataclasses.replace(BASE, pre_commands=(Command("pre", ContentSource.RAW, "true"),)),
        agent_packages=(),
    )
    seen: dict[str, object] = {}

    def record(argv: list[object], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        seen.update(argv=[str(a) for a in argv], **kwargs)
        return subprocess.CompletedProcess([], 0)

    rootfs.bootstrap(
        stage, tmp_path / "root", tmp_path, recipe_repos=(), env={"SOURCE_DATE_EPOCH": "1"}, runner=record
    )
    argv = seen["argv"]
    assert isinstance(argv, list)
    essential = [a for a in argv if a.startswith("--essential-hook=")]
    assert essential[0] == f"--essential-hook={rootfs.NO_HOST_KEYS_HOOK}" and "pre-01.sh" in essential[1]
    assert f"--customize-hook={rootfs.ONE_INITRAMFS_HOOK}" in argv
    assert seen["env"] == {"DEBIAN_FRONTEND": "noninteractive", "INITRD": "No", "SOURCE_DATE_EPOCH": "1"}


def test_a_kernel_without_its_initramfs_fails_the_stage(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/update-initramfs").write_text("")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-8").write_text("")
    (tmp_path / "boot/initrd.img-6.1.0-8").write_text("")
    rootfs.check_initramfs(tmp_path)
    (tmp_path / "boot/vmlinuz-6.1.0-9").write_text("")
    with pytest.raises(DataError, match="kernel 6.1.0-9 has no initramfs"):
        rootfs.check_initramfs(tmp_path)
