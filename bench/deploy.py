"""Deployment benchmark of the cloud core, one run, JSON lines:

- ``create_to_started``: ``vm create --hold`` then ``vm release`` → QEMU process started (the base
  image local, so nothing is downloaded), p50/p99 over 20 VMs (each cancelled right after), and
  for comparison ``virsh create`` of the same domain XML on a real libvirtd started here.
- ``boot``: with ``--image IMAGE``: QEMU start → the agent's "context applied" line, against
  QEMU start → the login prompt (getty's issue line) of the same image without a context CD,
  same firmware (TCG).

    .venv/bin/python bench/deploy.py [--vms 20] [--image out/debian-12-minimal.qcow2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/context.py

from cloud import lifecycle  # noqa: E402
from cloud.cores import CoreKind  # noqa: E402
from cloud.deploy import CreateRequest, create_vm  # noqa: E402
from cloud.qemu import Accel, QemuVm, VmSpec  # noqa: E402
from imagekit.diskimage import Firmware, boot_firmware, image_format  # noqa: E402
from imagekit.run import run  # noqa: E402
from imagekit.state import State  # noqa: E402

NET = 'NAME = "bench"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.77.0.0"\nNETWORK_SIZE = "C"\n'


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "deploy", **fields, "load_avg_1m": round(os.getloadavg()[0], 1)}), flush=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


def create_to_started(work: Path, vms: int) -> tuple[State, int, str]:
    """Returns a held VM whose domain XML (its files in place) the libvirt comparison runs."""
    from context.leases import NetworkStore
    from context.network import network_from_template
    from context.template import parse_template

    state = State.open(work / "state")
    NetworkStore(state).create(network_from_template(parse_template(NET, "bench.net")))
    base = work / "blank.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
    template = work / "vm.one"
    template.write_text(
        f'NAME = "bench"\nMEMORY = 64\nDISK = [ SOURCE = "{base}" ]\nNIC = [ NETWORK = "bench" ]\n'
        'CONTEXT = [ NETWORK = "YES", HOSTNAME = "$NAME-$VMID" ]\n'
    )
    samples: list[float] = []
    for _ in range(vms):
        start = time.perf_counter()
        held = create_vm(CreateRequest.from_file(template, hold=True), state=state)
        lifecycle.release(state, held.vmid)  # returns once QEMU runs (-daemonize)
        samples.append(time.perf_counter() - start)
        lifecycle.cancel(state, held.vmid)
    emit(what="create_to_started", core="embedded", vms=vms, **percentiles(samples))
    same = create_vm(CreateRequest.from_file(template, hold=True, core=CoreKind.LIBVIRT), state=state)
    return state, same.vmid, str(same.info["domain_xml"])


def virsh_create(work: Path, xml: str, vms: int) -> None:
    from cloud.cores.libvirt import URI

    started: list[int] = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if not Path(pidfile).exists():
            run([daemon, "-d"])
            deadline = time.monotonic() + 30
            while not Path(pidfile).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            started.append(int(Path(pidfile).read_text()))
    try:
        while run(["virsh", "-c", URI, "version"], check=False).returncode != 0:
            time.sleep(0.2)
        domain = work / "domain.xml"
        name = re.search(r"<name>([^<]+)</name>", xml)
        domain.write_text(xml)
        samples: list[float] = []
        for _ in range(vms):
            start = time.perf_counter()
            run(["virsh", "-c", URI, "create", domain])
            samples.append(time.perf_counter() - start)
            run(["virsh", "-c", URI, "destroy", name.group(1) if name else "x"], check=False)
        emit(what="create_to_started", core="virsh create (libvirt 9.0)", vms=vms, **percentiles(samples))
    finally:
        for pid in reversed(started):
            os.kill(pid, 15)


def boot(image: Path, work: Path, repeat: int) -> None:
    """Boot-to-context-applied (agent) against boot-to-login without a context CD, interleaved
    A B A B … ``repeat`` times; the medians are compared (one sample on 2 shared cores is noise)."""
    from cloud.boottest import BootTest, boot_test

    fmt = image_format(image)
    firmware = boot_firmware(image, fmt)
    firmware = Firmware.BIOS if firmware is not Firmware.UEFI else Firmware.UEFI
    state = State.open(work / "boot-state")
    applied: list[float] = []
    login: list[float] = []
    for _ in range(repeat):
        applied.append(
            boot_test(BootTest(image=image, firmware=firmware, timeout=1800), state=state).seconds
        )
        spec = VmSpec(disk=image.resolve(), disk_format=fmt, firmware=firmware, memory_mib=1024)
        with QemuVm(spec, work / "plain", accel=Accel.TCG) as vm:
            # The prompt itself ends without a newline; getty's issue line just before it has one.
            if vm.wait_for_line(re.compile(r"^Debian GNU/Linux .* ttyS0$"), timeout=1800) is not None:
                login.append(round(vm.elapsed(), 1))
    with_agent = statistics.median(applied)
    plain = round(statistics.median(login), 1) if login else None
    emit(what="boot", firmware=firmware.value, runs=repeat, context_applied_s=round(with_agent, 1),
         login_s=plain, samples={"context_applied_s": applied, "login_s": login},
         agent_overhead_pct=round((with_agent / plain - 1) * 100, 1) if plain else None)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--image", type=Path, help="a built image for the boot comparison")
    parser.add_argument("--repeat", type=int, default=3, help="boot pairs, interleaved (default 3)")
    args = parser.parse_args()
    os.environ.setdefault("IMAGEKIT_ACCEL", "tcg")
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-deploy-") as tmp:
        work = Path(tmp)
        state, held, xml = create_to_started(work, args.vms)
        try:
            virsh_create(work, xml, args.vms)
        finally:
            lifecycle.delete(state, held)
        if args.image is None:
            emit(what="boot", skipped="no --image given")
        else:
            boot(args.image, work, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
