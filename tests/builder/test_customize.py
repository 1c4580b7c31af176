from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagekit.builder import customize, firstboot
from imagekit.errors import InputError
from imagekit.recipe.model import ContentSource, File, OperatingSystem, Recipe, SourceFormat, User


def recipe(**kw: object) -> Recipe:
    return Recipe(
        name="t", os=OperatingSystem("Debian", "12"), source_path=Path("t.tdl"),
        source_format=SourceFormat.TDL, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_hostname_and_hosts(tmp_path: Path) -> None:
    customize.set_hostname(tmp_path, "web.example.org")
    assert (tmp_path / "etc/hostname").read_text() == "web.example.org\n"
    assert "127.0.1.1\tweb.example.org web" in (tmp_path / "etc/hosts").read_text()
    customize.set_hostname(tmp_path, "")
    assert (tmp_path / "etc/hostname").read_text() == "localhost\n"


def test_files_written_with_mode_and_decoded(tmp_path: Path) -> None:
    r = recipe(
        files=(
            File("/etc/motd", ContentSource.RAW, "hello\n"),
            File("/usr/local/bin/x", ContentSource.BASE64, "IyEvYmluL3NoCg==", mode=0o755),
        )
    )
    customize.write_files(r, tmp_path)
    assert (tmp_path / "etc/motd").read_text() == "hello\n"
    assert (tmp_path / "etc/motd").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "usr/local/bin/x").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "usr/local/bin/x").stat().st_mode & 0o777 == 0o755


def test_files_cannot_escape_the_tree(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="outside the image"):
        customize.write_files(recipe(files=(File("/../../x", ContentSource.RAW, ""),)), tmp_path / "root")


def test_password_hash_is_sha512_crypt_and_not_clear() -> None:
    hashed = customize.hash_password("s3cret pass")
    assert hashed.startswith("$6$") and "s3cret" not in hashed
    assert customize.hash_password("s3cret pass") != hashed  # salted


def test_ssh_keys_go_to_the_users_home(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    uid, gid = os.getuid(), os.getgid()
    (tmp_path / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/bash\nann:x:{uid}:{gid}::/home/ann:/bin/sh\n"
    )
    customize.install_keys(tmp_path, User("ann", ssh_keys=("ssh-ed25519 AAAA ann@x",)))
    keys = tmp_path / "home/ann/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA ann@x\n"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert keys.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(InputError, match="does not exist"):
        customize.install_keys(tmp_path, User("bob", ssh_keys=("k",)))


def test_clean_makes_a_template(tmp_path: Path) -> None:
    for name in (
        "var/lib/apt/lists/deb_dists_Release",
        "etc/ssh/ssh_host_ed25519_key",
        "var/cache/apt/pkgcache.bin",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "var/lib/apt/lists/lock").write_text("")
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef\n")
    customize.clean(tmp_path)
    assert [p.name for p in (tmp_path / "var/lib/apt/lists").iterdir()] == ["lock"]
    assert not list((tmp_path / "etc/ssh").glob("ssh_host_*"))
    assert not (tmp_path / "var/cache/apt/pkgcache.bin").exists()
    assert (tmp_path / "etc/machine-id").read_text() == ""


def test_first_boot_units_are_enabled(tmp_path: Path) -> None:
    firstboot.install_first_boot(tmp_path, cloud_init=False)
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    assert (
        os.readlink(wants / "imagekit-growroot.service") == "/etc/systemd/system/imagekit-growroot.service"
    )
    assert (wants / "imagekit-ssh-keygen.service").is_symlink()
    assert "ssh-keygen -A" in (tmp_path / "etc/systemd/system/imagekit-ssh-keygen.service").read_text()
    assert "iface eth0 inet dhcp" in (tmp_path / "etc/network/interfaces").read_text()
    assert os.access(tmp_path / "usr/local/sbin/imagekit-growroot", os.X_OK)
    firstboot.install_first_boot(tmp_path, cloud_init=True)
    assert "eth0" not in (tmp_path / "etc/network/interfaces").read_text()
    assert (tmp_path / "etc/cloud/cloud.cfg.d/90-imagekit.cfg").is_file()
