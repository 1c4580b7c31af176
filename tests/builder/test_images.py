"""Real builds of the shipped recipes (session fixtures in tests/conftest.py), checked without
mounting anything: sfdisk for the table, debugfs for ext4, mtools for the FAT boot partition."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagekit.builder.bootloader import SYSLINUX_GPTMBR, SYSLINUX_MBR
from imagekit.recipe import load_recipe
from imagekit.recipe.normalise import recipe_hash
from imagekit.run import run

from ..waiting import wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# The session fixtures (tests/conftest.py) return conftest.BuiltImage(path, manifest, firmware).
BuiltImage = Any


@dataclasses.dataclass(frozen=True)
class Opened:
    raw: Path
    manifest: dict[str, object]
    partitions: list[dict[str, object]]

    def part(self, mount: str) -> dict[str, object]:
        return next(p for p in self.partitions if p["mount"] == mount)

    def ext(self, request: str, mount: str = "/") -> bytes:
        offset = self.part(mount)["start"]
        return run(["debugfs", "-R", request, f"{self.raw}?offset={offset}"]).stdout

    def fat(self, tmp: Path) -> Path:
        boot = self.part("/boot/efi")
        start, size = int(boot["start"]), int(boot["size"])  # type: ignore[call-overload]
        path = tmp / "boot.fat"
        with open(self.raw, "rb") as src:
            src.seek(start)
            path.write_bytes(src.read(size))
        return path


def open_image(image: BuiltImage, tmp: Path) -> Opened:
    doc = json.loads(image.manifest.read_text())
    raw = image.manifest.parent / f"{doc['name']}.raw"
    if not raw.exists():
        raw = tmp / "disk.raw"
        run(["qemu-img", "convert", "-O", "raw", image.path, raw])
    return Opened(raw, doc, doc["partitions"])


@pytest.fixture(scope="module")
def minimal(minimal_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Opened:
    return open_image(minimal_image, tmp_path_factory.mktemp("minimal-open"))


@pytest.fixture(scope="module")
def cloud(cloud_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Opened:
    return open_image(cloud_image, tmp_path_factory.mktemp("cloud-open"))


def test_minimal_is_mbr_with_syslinux(minimal: Opened, tmp_path: Path) -> None:
    dump = run(["sfdisk", "--json", minimal.raw]).stdout
    table = json.loads(dump)["partitiontable"]
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True
    assert root["start"] * 512 == minimal.part("/")["start"]
    assert root["size"] == 2048 * 2048  # the recipe's 2 GiB root
    assert minimal.raw.read_bytes()[:440] == SYSLINUX_MBR.read_bytes()[:440]
    fat = minimal.fat(tmp_path)
    listing = run(["mdir", "-i", fat, "-a", "-b", "::"]).stdout.decode()
    for name in ("vmlinuz", "initrd.img", "ldlinux.sys", "syslinux.cfg"):
        assert f"::/{name}" in listing
    cfg = run(["mtype", "-i", fat, "::syslinux.cfg"]).stdout.decode()
    assert f"root=UUID={minimal.part('/')['uuid']}" in cfg and "console=ttyS0" in cfg


def test_minimal_raw_output_is_the_disk(minimal_image: BuiltImage, minimal: Opened) -> None:
    outputs = {o["format"]: o for o in minimal.manifest["outputs"]}  # type: ignore[attr-defined]
    assert set(outputs) == {"qcow2", "raw"}
    raw = minimal_image.path.with_suffix(".raw")
    assert outputs["raw"]["file"] == raw.name
    assert outputs["raw"]["size"] == raw.stat().st_size == minimal.manifest["disk_size"]
    assert outputs["raw"]["checksums"]["sha1"] == hashlib.sha1(raw.read_bytes()).hexdigest()
    assert set(outputs["raw"]["checksums"]) == {"md5", "sha1", "sha256", "sha512"}


def test_minimal_tree_contents(minimal: Opened) -> None:
    assert minimal.ext("cat /etc/hostname") == b"debian-minimal\n"
    fstab = minimal.ext("cat /etc/fstab").decode()
    assert f"UUID={minimal.part('/')['uuid']} / ext4" in fstab
    assert minimal.ext("cat /etc/machine-id") == b""
    ssh = minimal.ext("ls /etc/ssh").decode()
    assert "sshd_config" in ssh and "ssh_host_" not in ssh
    shadow = minimal.ext("cat /etc/shadow").decode()
    root_hash = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]
    assert root_hash.startswith("$6$")
    assert b"imagekit" not in minimal.ext("cat /etc/shadow").replace(b"imagekit-", b"")
    keys = minimal.ext("cat /home/debian/.ssh/authorized_keys").decode()
    assert keys.startswith("ssh-ed25519 ")
    wants = minimal.ext("ls /etc/systemd/system/multi-user.target.wants").decode()
    for unit in ("imagekit-context.service", "imagekit-growroot.service", "imagekit-ssh-keygen.service"):
        assert unit in wants
    lists = minimal.ext("ls /var/lib/apt/lists").decode()
    assert "Packages" not in lists and "InRelease" not in lists


def test_cloud_is_hybrid_gpt(cloud: Opened, tmp_path: Path) -> None:
    table = json.loads(run(["sfdisk", "--json", cloud.raw]).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    esp, root = table["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" and "LegacyBIOSBootable" in esp["attrs"]
    assert root["type"] == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    assert cloud.raw.read_bytes()[:440] == SYSLINUX_GPTMBR.read_bytes()[:440]
    fat = cloud.fat(tmp_path)
    assert run(["mtype", "-i", fat, "::loader/loader.conf"]).stdout.startswith(b"default imagekit.conf")
    entry = run(["mtype", "-i", fat, "::loader/entries/imagekit.conf"]).stdout.decode()
    assert f"options root=UUID={cloud.part('/')['uuid']}" in entry
    efi = run(["mdir", "-i", fat, "-b", "::EFI/BOOT"]).stdout.decode()
    assert "BOOTX64.EFI" in efi.upper()
    assert cloud.ext("cat /etc/motd") == b"Debian 12 cloud appliance built by imagekit\n"
    assert cloud.ext("cat /etc/hostname") == b"debian-cloud\n"


def test_cloud_manifest_outputs_and_checksums(cloud_image: BuiltImage, cloud: Opened) -> None:
    doc = cloud.manifest
    recipe = load_recipe(REPO / "recipes" / "debian-12-cloud.tdl")
    assert doc["recipe"]["hash"] == recipe_hash(recipe)  # type: ignore[index]
    assert doc["firmware"] == cloud_image.firmware == "hybrid"
    outputs = {o["format"]: o for o in doc["outputs"]}  # type: ignore[attr-defined]
    assert set(outputs) == {"qcow2"}
    qcow2 = cloud_image.path
    assert outputs["qcow2"]["file"] == qcow2.name
    assert outputs["qcow2"]["checksums"]["sha256"] == hashlib.sha256(qcow2.read_bytes()).hexdigest()
    assert outputs["qcow2"]["checksums"]["md5"] == hashlib.md5(qcow2.read_bytes()).hexdigest()
    assert set(outputs["qcow2"]["checksums"]) == {"md5", "sha1", "sha256", "sha512"}
    info = json.loads(run(["qemu-img", "info", "--output=json", qcow2]).stdout)
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert info["virtual-size"] == doc["disk_size"]
    names = {p["name"]: p["version"] for p in doc["packages"]}  # type: ignore[attr-defined]
    assert "linux-image-cloud-amd64" in names and "openssh-server" in names and "ca-certificates" in names
    for step in ("install packages", "customize", "assemble disk", "convert", "checksums", "total"):
        assert step in doc["timings"]  # type: ignore[operator]
    assert (qcow2.parent / doc["libvirt_xml"]).read_text().startswith("<domain")
    assert "CONTEXT = [" in (qcow2.parent / doc["opennebula_template"]).read_text()
    assert not list(qcow2.parent.glob(".*"))


def test_cli_rebuild_after_post_change_hits_the_cache(
    minimal_image: BuiltImage, build_state_dir: Path, tmp_path: Path
) -> None:
    text = (REPO / "recipes" / "debian-12-minimal.appl").read_text()
    recipe = tmp_path / "changed.appl"
    recipe.write_text(text + "post:\n  base:\n    - echo changed > /etc/imagekit-changed\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "imagekit"), "--state", str(build_state_dir), "build",
         str(recipe), "-o", str(tmp_path / "out"), "--format", "qcow2,vmdk", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["cache"]["hit"] is True and result["cache"]["used"] is True
    assert [o["format"] for o in result["outputs"]] == ["qcow2", "vmdk"]
    assert "install packages" in proc.stderr and "customize" in proc.stderr
    info = json.loads(run(["qemu-img", "info", "--output=json", result["outputs"][1]["path"]]).stdout)
    assert info["format"] == "vmdk"


def test_sigterm_during_a_build_cleans_up(
    minimal_image: BuiltImage, build_state_dir: Path, tmp_path: Path
) -> None:
    text = (REPO / "recipes" / "debian-12-minimal.appl").read_text()
    recipe = tmp_path / "slow.appl"
    recipe.write_text(text + "post:\n  base:\n    - sleep 317\n")
    out, work = tmp_path / "out", tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "imagekit"), "--state", str(build_state_dir), "build",
         str(recipe), "-o", str(out)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(work)},
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("customize"):
            break
    wait_until(lambda: _sleepers() != [], timeout=300, what="the post-command's sleep", process=proc)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted" in rest
    assert list(work.iterdir()) == []
    assert not out.exists() or list(out.iterdir()) == []
    assert _sleepers() == []


def _sleepers() -> list[Path]:
    return [p for p in Path("/proc").glob("[0-9]*") if b"sleep\x00317" in _cmdline(p)]


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""
