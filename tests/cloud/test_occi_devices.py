"""OCCI disks without ``dev`` (issue 17, point 11): the next free target, not a 400.

1.4's clients often leave ``dev`` out of a COMPUTE's DISK; oned gives a DISK without TARGET
the first free ``DEFAULT_DEVICE_PREFIX`` + ``a…z`` (``hd`` by default: oned.conf). A device
the request names is never handed out twice. The COMPUTE is created in-process and held.
"""

from __future__ import annotations

import base64
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from starlette.testclient import TestClient

from cloud.occi.server import create_app
from cloud.occi.xml import DiskRef, assign_devices, parse_compute
from cloud.store import VmStore
from cloud.users import UserStore
from context.template import parse_template
from imagekit.httperror import HttpError
from imagekit.state import State
from tests.cloud.blank import halting_disk


def test_assign_devices_skips_the_named_ones() -> None:
    disks = parse_compute(
        b"<COMPUTE><INSTANCE_TYPE>small</INSTANCE_TYPE><STORAGE>"
        b'<DISK image="1"/><SWAP size="64" dev="hda"/><DISK image="2"/><FS size="8" dev="hdc"/>'
        b"</STORAGE></COMPUTE>"
    ).disks
    assert [d.dev for d in disks] == ["", "hda", "", "hdc"]
    assert [d.dev for d in assign_devices(disks, "hd")] == ["hdb", "hda", "hdd", "hdc"]
    assert [d.dev for d in assign_devices(disks, "sd")] == ["sda", "hda", "sdb", "hdc"]
    named = tuple(DiskRef("disk", f"hd{c}", storage=1) for c in "abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(HttpError) as err:
        assign_devices((*named, DiskRef("disk", "", storage=1)), "hd")
    assert err.value.status == 400


def test_a_compute_whose_disks_have_no_dev_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "pw")
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    http = TestClient(create_app(state, hold=True), headers=auth)
    image = tmp_path / "blank.qcow2"
    halting_disk(image)
    made = http.post(
        "/storage",
        data={"occixml": "<DISK><NAME>blank</NAME></DISK>"},
        files={"file": ("blank.qcow2", image.read_bytes())},
    )
    assert made.status_code == 201, made.text
    storage = ET.fromstring(made.content).findtext("ID")
    body = (
        "<COMPUTE><NAME>lenient</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE><STORAGE>"
        f'<DISK image="{storage}"/><SWAP size="16" dev="hda"/></STORAGE></COMPUTE>'
    )
    answer = http.post("/compute", content=body)
    assert answer.status_code == 201, answer.text
    vm = ET.fromstring(answer.content)
    assert [(d.get("type"), d.get("dev")) for d in vm.iter("DISK")] == [("disk", "hdb"), ("swap", "hda")]
    record = VmStore(state).get(int(vm.findtext("ID") or ""))
    template = parse_template(record.info["deployed_template"])
    assert [d.get("TARGET") for d in template.vectors("DISK")] == ["hdb", "hda"]
