from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from imagekit.builder import rootfs
from imagekit.builder.sources import content_bytes
from imagekit.errors import InputError, NetworkError
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
