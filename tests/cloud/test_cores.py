"""The cores as plugins (issue 21, layout): one enum, one protocol, one module per core."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud import lifecycle
from cloud.cores import Core, CoreKind, core_of
from cloud.cores.local import LocalCore
from cloud.model import VmState
from cloud.store import VmStore
from imagekit.errors import InputError
from imagekit.state import State

VERBS = ("shutdown", "cancel", "delete", "suspend", "resume", "stop", "reboot", "hold", "release")


@pytest.mark.parametrize("kind", list(CoreKind))
def test_every_core_offers_the_whole_protocol(kind: CoreKind) -> None:
    core: Core = core_of(kind)
    assert core.kind is kind
    for name in ("deploy", *VERBS, "reconcile", "migrate"):
        assert callable(getattr(core, name)), name
    assert isinstance(core, LocalCore) is not kind.remote  # the remote core runs nothing here


def test_the_pool_records_the_kind_and_reads_it_back_as_the_enum(tmp_path: Path) -> None:
    store = VmStore(State.open(tmp_path / "state"))
    store.insert(1, name="a", owner="o", core=CoreKind.LIBVIRT, template="t", directory=tmp_path / "1")
    record = store.get(1)
    assert record.core is CoreKind.LIBVIRT and record.state is VmState.PENDING


@pytest.mark.parametrize("kind", list(CoreKind))
@pytest.mark.parametrize("live", [False, True])
def test_migration_is_refused_clearly_until_it_exists(tmp_path: Path, kind: CoreKind, live: bool) -> None:
    state = State.open(tmp_path / "state")
    VmStore(state).insert(3, name="a", owner="o", core=kind, template="t", directory=tmp_path / "3")
    verb = "livemigrate" if live else "migrate"
    with pytest.raises(InputError, match=f"VM 3: {verb} to host 'node2' is not supported yet"):
        lifecycle.migrate(state, 3, "node2", live=live)
    assert VmStore(state).get(3).state is VmState.PENDING  # nothing moved


def test_migrating_an_unknown_vm_names_the_vm(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no VM 9"):
        lifecycle.migrate(State.open(tmp_path / "state"), 9, "node2")


def test_cli_migrate_names_an_unknown_host_then_refuses_clearly(
    _isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagekit.cli import main

    state = State.open(_isolated_state)
    VmStore(state).insert(
        2, name="a", owner="o", core=CoreKind.EMBEDDED, template="t", directory=_isolated_state
    )
    assert main(["vm", "migrate", "2", "node9"]) == 1
    assert "no host 'node9'" in capsys.readouterr().err
    assert main(["vm", "livemigrate", "2", "localhost"]) == 1
    assert "VM 2: livemigrate to host 'localhost' is not supported yet" in capsys.readouterr().err
