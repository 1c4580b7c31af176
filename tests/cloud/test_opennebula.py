"""The OpenNebula core against a loopback oned stand-in (no OpenNebula can run here).

The stand-in accepts only the documented XML-RPC calls with their documented arguments
(``cloudcore.md`` §2.1–2.2: session first, ``one.image.allocate(s, template, ds_id)``,
``one.vm.allocate(s, template, hold)``, ``one.vm.action(s, action, id)``,
``one.vm.info(s, id)``; answers ``[ok, value, code]``), and the action names oned accepts
(OpenNebula/one src/scheduler/src/pool/VirtualMachineXML.cc, ``parse_action_name``). States
are OpenNebula/one include/VirtualMachine.h ``VmState``/``LcmState``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from cloud import lifecycle
from cloud.cores import CoreKind, opennebula
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState
from context.template import parse_template
from imagekit.errors import CommandError
from imagekit.state import State
from tests.cloud.blank import halting_disk

SESSION = "oneadmin:secret"
ACTIONS = {
    "terminate", "terminate-hard", "undeploy", "undeploy-hard", "hold", "release", "stop", "suspend",
    "resume", "reboot", "reboot-hard", "poweroff", "poweroff-hard",
}  # fmt: skip
# What an action does to (STATE, LCM_STATE), as oned's DispatchManager would.
AFTER = {"terminate": (6, 0), "terminate-hard": (6, 0), "suspend": (5, 0), "resume": (3, 3), "stop": (4, 0)}


class FakeOned:
    """Records every call; a call outside the documented API is a fault the test sees."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.vms: dict[int, tuple[int, int]] = {}
        self.images = 100

    def _check(
        self, method: str, params: tuple[Any, ...], types: tuple[type, ...], optional: int = 0
    ) -> None:
        self.calls.append((method, params))
        if not len(types) - optional <= len(params) <= len(types):
            raise ValueError(f"{method}: {len(params)} arguments")
        for i, (value, kind) in enumerate(zip(params, types, strict=False)):
            if type(value) is not kind:
                raise TypeError(
                    f"{method}: argument {i} is {type(value).__name__}, expected {kind.__name__}"
                )

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any]:
        if params and params[0] != SESSION:
            return [False, "[one] User couldn't be authenticated", 0x0100]
        if method == "one.image.allocate":
            self._check(method, params, (str, str, int, bool), optional=1)
            parse_template(params[1], "image")  # it must be a valid template
            self.images += 1
            return [True, self.images, 0]
        if method == "one.vm.allocate":
            self._check(method, params, (str, str, bool))
            parse_template(params[1], "vm")
            vmid = 40 + len(self.vms)
            self.vms[vmid] = (2, 0) if params[2] else (1, 0)
            return [True, vmid, 0]
        if method == "one.vm.action":
            self._check(method, params, (str, str, int))
            if params[1] not in ACTIONS:
                return [False, f"[one.vm.action] Wrong action: {params[1]}", 0x1000]
            self.vms[params[2]] = AFTER.get(params[1], (1, 0) if params[1] == "release" else (2, 0))
            return [True, params[2], 0]
        if method == "one.vm.info":
            self._check(method, params, (str, int, bool), optional=1)
            state, lcm = self.vms[params[1]]
            xml = f"<VM><ID>{params[1]}</ID><STATE>{state}</STATE><LCM_STATE>{lcm}</LCM_STATE></VM>"
            return [True, xml, 0]
        raise ValueError(f"{method} is not in the documented API")


@pytest.fixture
def oned() -> Iterator[tuple[FakeOned, str]]:
    fake = FakeOned()

    class Quiet(SimpleXMLRPCRequestHandler):
        rpc_paths = ("/RPC2",)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet, logRequests=False, allow_none=False)
    server.register_instance(fake)
    # shutdown() waits for serve_forever's next poll: 0.5 s a test by default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/RPC2"
    server.shutdown()
    server.server_close()


@pytest.fixture
def auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "one_auth").write_text(SESSION + "\n")
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "one_auth"))


def _template(tmp_path: Path) -> Path:

    base = tmp_path / "base.qcow2"
    halting_disk(base)
    path = tmp_path / "web.one"
    path.write_text(
        f'NAME = "web"\nMEMORY = 512\nDISK = [ SOURCE = "{base}", TARGET = "vda" ]\n'
        'NIC = [ NETWORK = "public" ]\n'
        'CONTEXT = [ NETWORK = "YES", IP = "$NIC[IP, NETWORK=\\"public\\"]", HOSTNAME = "$NAME" ]\n'
    )
    return path


def test_deploy_registers_the_image_and_hands_context_over_unresolved(
    oned: tuple[FakeOned, str], auth: None, tmp_path: Path
) -> None:
    fake, endpoint = oned
    state = State.open(tmp_path / "state")
    template = _template(tmp_path)
    request = CreateRequest.from_file(template, core=CoreKind.OPENNEBULA, one_endpoint=endpoint)
    record = create_vm(request, state=state)
    assert record.core == "opennebula" and record.state is VmState.PENDING
    assert record.info["one_id"] == 40 and record.info["one_images"] == [101]
    methods = [m for m, _ in fake.calls]
    assert methods == ["one.image.allocate", "one.vm.allocate", "one.vm.info"]
    image_args = fake.calls[0][1]
    image = parse_template(image_args[1], "image")
    assert image.single("PATH") == str(tmp_path / "base.qcow2") and image.single("TYPE") == "OS"
    assert image.single("FORMAT") == "qcow2" and image_args[2] == opennebula.DEFAULT_DATASTORE
    vm_text, hold = fake.calls[1][1][1], fake.calls[1][1][2]
    assert hold is False
    sent = parse_template(vm_text, "vm")
    assert sent.vectors("DISK")[0].items == (("IMAGE_ID", "101"), ("TARGET", "vda"))
    context = sent.vectors("CONTEXT")[0]
    assert context.get("IP") == '$NIC[IP, NETWORK="public"]' and context.get("HOSTNAME") == "$NAME"

    # oned's scheduler deploys it; `vm list` follows.
    fake.vms[40] = (3, 3)
    assert lifecycle.show(state, record.vmid).state is VmState.RUNNING
    assert lifecycle.suspend(state, record.vmid).state is VmState.SUSPENDED
    assert lifecycle.resume(state, record.vmid).state is VmState.RUNNING
    assert lifecycle.shutdown(state, record.vmid).state is VmState.DONE
    actions = [p[1] for m, p in fake.calls if m == "one.vm.action"]
    assert actions == ["suspend", "resume", "terminate"]
    assert all(p[0] == SESSION for _, p in fake.calls)


def test_hold_release_and_a_refusal(oned: tuple[FakeOned, str], auth: None, tmp_path: Path) -> None:
    fake, endpoint = oned
    state = State.open(tmp_path / "state")
    request = CreateRequest.from_file(
        _template(tmp_path), hold=True, core=CoreKind.OPENNEBULA, one_endpoint=endpoint
    )
    record = create_vm(request, state=state)
    assert record.state is VmState.HOLD and fake.calls[1][1][2] is True
    assert lifecycle.release(state, record.vmid).state is VmState.PENDING
    (tmp_path / "one_auth").write_text("oneadmin:wrong")
    with pytest.raises(CommandError, match="couldn't be authenticated"):
        lifecycle.cancel(state, record.vmid)


@pytest.mark.parametrize(
    ("state", "lcm", "expected"),
    [
        (1, 0, VmState.PENDING), (2, 0, VmState.HOLD), (3, 1, VmState.PROLOG), (3, 2, VmState.BOOT),
        (3, 3, VmState.RUNNING), (3, 12, VmState.SHUTDOWN), (3, 11, VmState.SHUTDOWN),
        (3, 16, VmState.UNKNOWN), (3, 36, VmState.FAILED), (4, 0, VmState.STOPPED),
        (5, 0, VmState.SUSPENDED), (6, 0, VmState.DONE), (8, 0, VmState.STOPPED),
    ],
)  # fmt: skip
def test_states_map_onto_onevm(state: int, lcm: int, expected: VmState) -> None:
    assert opennebula.map_state(state, lcm) is expected


def test_the_cli_reaches_the_opennebula_core(
    oned: tuple[FakeOned, str], auth: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from imagekit.cli import main

    fake, endpoint = oned
    args = ["--state", str(tmp_path / "state"), "vm", "create", str(_template(tmp_path))]
    assert main([*args, "--core", "opennebula", "--one-endpoint", endpoint, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["core"], shown["state"], shown["reason"]) == ("opennebula", "pending", "OpenNebula VM 40")
    assert main([*args, "--core", "opennebula"]) == 1
    assert "needs --one-endpoint URL" in capsys.readouterr().err
