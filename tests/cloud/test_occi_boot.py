"""The OCCI walk with a VM that really runs: compute → ACTIVE → suspended → resume → stopped →
resume → done, each PUT a core verb (OpenNebula/one release-1.4 src/cloud/occi/lib/OCCIServer.rb
put_compute: stopped → stop, suspended → suspend, resume → resume, done → finalize; 202 and the
COMPUTE). The disk is blank: firmware waits, a live QEMU process is what ACTIVE means here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud import lifecycle
from cloud.cores import SAVED_STATE
from cloud.model import VmState
from cloud.users import UserStore
from imagekit.state import State
from tests.cloud.blank import halting_disk
from tests.cloud.serving import cloud_server
from tests.cloud.test_occi_server import client, compute_body, upload, xml

pytestmark = [pytest.mark.vm, pytest.mark.timeout(300)]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "blank.qcow2"
    halting_disk(path)
    return path


@pytest.fixture
def booting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[State, httpx.Client]]:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "alice-pw")
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    try:
        with cloud_server("occi", state.root) as url, client(url.rstrip("/")) as alice:
            alice.timeout = httpx.Timeout(240)
            yield state, alice
    finally:
        for record in lifecycle.list_vms(state):
            if record.state not in (VmState.DONE, VmState.FAILED):
                lifecycle.delete(state, record.vmid)


def _put(alice: httpx.Client, vmid: str, wanted: str) -> str:
    body = f"<COMPUTE><STATE>{wanted}</STATE></COMPUTE>".encode()
    return xml(alice.put(f"/compute/{vmid}", content=body), 202).findtext("STATE") or ""


def test_compute_runs_and_changes_state(booting: tuple[State, httpx.Client], image: Path) -> None:
    state, alice = booting
    storage = upload(alice, image).findtext("ID") or ""
    net = alice.post("/network", content=b"<NIC><NAME>run</NAME><ADDRESS>10.5.0.0</ADDRESS></NIC>")
    network = xml(net, 201).findtext("ID") or ""
    vm = xml(alice.post("/compute", content=compute_body(storage, network)), 201)
    vmid = vm.findtext("ID") or ""
    assert vm.findtext("STATE") == "PENDING"  # answered before the prolog (OCCIServer.rb post_compute)
    deadline = time.monotonic() + 240  # the server's dispatcher: prolog, boot (all ACTIVE)
    while (record := lifecycle.show(state, int(vmid))).state is not VmState.RUNNING:
        assert record.state is not VmState.FAILED, (record.step, record.reason)
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    assert xml(alice.get(f"/compute/{vmid}"), 200).findtext("STATE") == "ACTIVE"
    assert _put(alice, vmid, "suspended") == "SUSPENDED"
    assert _put(alice, vmid, "resume") == "ACTIVE"
    assert _put(alice, vmid, "stopped") == "STOPPED"
    assert (lifecycle.show(state, int(vmid)).directory / SAVED_STATE).is_file()
    assert _put(alice, vmid, "resume") == "ACTIVE"
    assert _put(alice, vmid, "done") == "DONE"
    assert lifecycle.show(state, int(vmid)).state is VmState.DONE
