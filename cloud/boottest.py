"""Boot an image with a context ISO and check, from the serial console, that it was applied.

    result = boot_test(BootTest(image=Path("debian.qcow2")), state=State.open(state_dir()))
    print(result.seconds, result.report)

The image boots under QEMU (``cloud.qemu``) with a copy-on-write overlay, one virtio NIC per
lease (with the lease's MAC, so the agent matches it) and the context ISO on virtio-scsi. The
test passes when imagekit's agent reports the context applied — hostname, the static IP on the
NIC with the lease's MAC, the SSH keys, every init script exiting 0 — and, for images where
cloud-init reads the context (alone or beside the agent), when cloud-init finished with the
datasource of the medium (never DataSourceNone) and applied the hostname, the NIC addresses and
the keys (``cloud.cloud_init``). Without a template, the demo in ``etc/boot-test/`` is used
with its network created in a throw-away state.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cloud.cloud_init import LOGIN_PROMPT, expect_cloud_init, shown_hostnames, verify_cloud_init
from cloud.qemu import Accel, Nic, QemuVm, VmSpec, choose_accel
from cloud.siteconfig import SiteConfig, load_site
from context.flavor import IsoFlavor
from context.model import ResolvedContext
from imagekit.agent import REPORT_PREFIX, AgentReport, find_report
from imagekit.diskimage import Firmware, boot_firmware, image_format
from imagekit.errors import InputError, VerificationError
from imagekit.interrupt import interruptible
from imagekit.state import State

log = logging.getLogger(__name__)

DEMO_DIR = "boot-test"
DEMO_TEMPLATE = "vm.one"
DEMO_MARKER = "IMAGEKIT-BOOT-TEST-MARKER"
CLOUD_INIT_DONE = re.compile(r"Cloud-init v\. \S+ finished at")
_AGENT_LINE = re.compile(re.escape(REPORT_PREFIX) + r"\{")
_ETH_MAC = re.compile(r"ETH(\d+)_MAC\Z")
MAX_CPUS = 64
MIN_MEMORY_MIB = 64


@dataclass(frozen=True)
class BootTest:
    image: Path
    template: Path | None = None  # None: the demo context in etc/boot-test/
    firmware: Firmware | None = None  # None: detected from the image's boot sector
    flavor: IsoFlavor = IsoFlavor.OPENNEBULA
    timeout: float = 300.0
    memory_mib: int = 1024
    cpus: int = 2
    keep_log: Path | None = None  # copy the serial log here (kept even on failure)


@dataclass(frozen=True)
class BootResult:
    image: Path
    firmware: Firmware
    accel: Accel
    agent: str  # "imagekit", "cloud-init" or "both" (as the recipe's context_agent)
    seconds: float  # from QEMU start to the agent's line
    report: AgentReport | None
    checks: tuple[str, ...] = ()  # what was verified, in words
    nics: tuple[str, ...] = field(default=())  # MACs attached


def _demo_context(state_root: Path, workdir: Path, site: SiteConfig) -> ResolvedContext:
    """Resolve etc/boot-test/vm.one against its own networks in a throw-away state."""
    from context.leases import NetworkStore
    from context.network import network_from_template
    from context.render import prepare_context
    from context.template import load_template

    source = site.etc / DEMO_DIR
    if not (source / DEMO_TEMPLATE).is_file():
        raise InputError(f"the demo context is missing: {source / DEMO_TEMPLATE}")
    # FILES under /etc are refused (CONTEXT_RESTRICTED_DIRS) when etc/ is installed there.
    demo = workdir / "demo"
    shutil.copytree(source, demo)
    state = State.open(state_root)
    store = NetworkStore(state)
    for net in sorted(demo.glob("*.net")):
        store.create(network_from_template(load_template(net)))
    template = demo / DEMO_TEMPLATE
    return prepare_context(load_template(template), state=state, settings=site.oned, base_dir=demo)


def _nics(ctx: ResolvedContext) -> tuple[Nic, ...]:
    if ctx.leases:
        return tuple(Nic(lease.mac.lower()) for lease in ctx.leases)
    # A template with hand-written ETHn_MAC and no NIC=[NETWORK=…]: boot with those MACs.
    found = sorted((int(m.group(1)), v) for k, v in ctx.variables.items() if (m := _ETH_MAC.match(k)) and v)
    return tuple(Nic(mac.lower()) for _, mac in found)


def expected_hostname(variables: dict[str, str]) -> str:
    """What one-context sets: SET_HOSTNAME, else HOSTNAME, sanitised like its net-15 script."""
    name = variables.get("SET_HOSTNAME") or variables.get("HOSTNAME") or ""
    return re.sub(r"[^-a-zA-Z0-9.]", "-", name).strip("-")


def verify_report(report: AgentReport, variables: dict[str, str], *, demo: bool = False) -> list[str]:
    """Check the agent's report against the context; VerificationError names what is missing."""
    checks: list[str] = []

    def fail(rule: str, message: str) -> None:
        extra = f" (agent errors: {'; '.join(report.errors)})" if report.errors else ""
        raise VerificationError(message + extra, rule=rule)

    if report.status == "no-context":
        fail("boot-test.context", "the agent found no CONTEXT CD")
    host = expected_hostname(variables)
    if host:
        if report.hostname != host:
            fail("boot-test.hostname", f"expected hostname {host!r}, agent set {report.hostname!r}")
        checks.append(f"hostname {host}")
    by_mac = {nic.mac: nic for nic in report.nics}
    for key, mac in sorted(variables.items()):
        m = _ETH_MAC.match(key)
        if not m or not mac:
            continue
        ip = variables.get(f"ETH{m.group(1)}_IP", "")
        nic = by_mac.get(mac.lower())
        if nic is None:
            fail("boot-test.nic", f"no NIC with MAC {mac} was configured")
        elif ip and nic.ip != ip:
            fail("boot-test.nic", f"{nic.device} ({mac}): expected IP {ip}, has {nic.ip or 'none'}")
        else:
            checks.append(f"{nic.device} {mac} {nic.ip}")
    keys = [
        k for k in variables.get("SSH_PUBLIC_KEY", "").splitlines() if k.strip() and not k.startswith("#")
    ]
    if keys:
        if report.ssh_keys < len(keys):
            fail(
                "boot-test.ssh",
                f"expected {len(keys)} SSH key(s) installed, agent reports {report.ssh_keys}",
            )
        checks.append(f"{report.ssh_keys} SSH key(s) for {report.user}")
    for name, status in report.init_script_status().items():
        if status != "0":
            fail("boot-test.init", f"init script {name} exited with {status}")
        checks.append(f"init script {name} ran")
    if demo and "init.sh" not in report.init_script_status():
        fail("boot-test.init", "the demo's init.sh did not run")
    if report.status != "ok":
        fail("boot-test.agent", f"the agent reported {report.status}")
    return checks


def _build_medium(ctx: ResolvedContext, flavor: IsoFlavor, path: Path, site: SiteConfig) -> None:
    from context.iso import build_iso

    data = build_iso(ctx, flavor, restricted_dirs=site.oned.context_restricted_dirs)
    path.write_bytes(data)


def boot_test(test: BootTest, *, state: State, site: SiteConfig | None = None) -> BootResult:
    """Boot ``test.image`` with its context and verify the agent's report (see module doc).
    ``site``: the command's (none: ``load_site()``)."""
    site = site or load_site()
    if test.keep_log is not None and not test.keep_log.parent.is_dir():
        # Checked first: finding out after a five-minute boot would lose the log it was for.
        raise InputError("--serial-log: no such directory", where=str(test.keep_log.parent))
    if not 1 <= test.cpus <= MAX_CPUS:
        raise InputError(f"--cpus: expected 1 to {MAX_CPUS}, got {test.cpus}")
    if test.memory_mib < MIN_MEMORY_MIB:
        raise InputError(f"--memory: expected at least {MIN_MEMORY_MIB} MiB, got {test.memory_mib}")
    fmt = image_format(test.image)
    with tempfile.TemporaryDirectory(prefix="imagekit-boot-") as tmp, interruptible():
        workdir = Path(tmp)
        firmware = test.firmware or boot_firmware(test.image, fmt)
        if test.template is None:
            ctx = _demo_context(workdir / "state", workdir, site)
        else:
            from context.render import prepare_context
            from context.template import load_template

            template = load_template(test.template)
            base = test.template.parent
            ctx = prepare_context(template, state=state, settings=site.oned, base_dir=base)
        iso = workdir / "context.iso"
        _build_medium(ctx, test.flavor, iso, site)
        nics = _nics(ctx)
        spec = VmSpec(
            disk=test.image.resolve(),
            disk_format=fmt,
            firmware=firmware,
            memory_mib=test.memory_mib,
            cpus=test.cpus,
            cdroms=(iso,),
            nics=nics,
        )
        accel = choose_accel(state)
        log.info(
            "booting %s (%s, %s, %s) with %d NIC(s)", test.image, fmt, firmware.value, accel.value, len(nics)
        )
        vm = QemuVm(spec, workdir / "vm", accel=accel)
        try:
            with vm:
                return _watch(vm, test, ctx, firmware, accel, nics)
        finally:
            if test.keep_log is not None:
                shutil.copyfile(vm.serial_log, test.keep_log)


def _watch(
    vm: QemuVm, test: BootTest, ctx: ResolvedContext, firmware: Firmware, accel: Accel, nics: tuple[Nic, ...]
) -> BootResult:
    """Wait for the agents' verdicts: imagekit's report line, cloud-init's last line, or both
    when the agent says cloud-init reads the context too (its line comes first: the agent runs
    before network-pre.target, cloud-init's final stage after network-online.target)."""
    pattern = re.compile(f"{_AGENT_LINE.pattern}|{CLOUD_INIT_DONE.pattern}")
    deadline = vm.elapsed() + test.timeout
    report: AgentReport | None = None
    checks: list[str] = []
    while True:
        line = vm.wait_for_line(pattern, max(0.0, deadline - vm.elapsed()))
        seconds = round(vm.elapsed(), 1)
        if line is None:
            tail = "\n".join(vm.console().splitlines()[-5:])
            waited = "cloud-init did not finish" if report else "no context agent line"
            raise VerificationError(
                f"{waited} within {test.timeout:g} s; console ends with:\n{tail}", rule="boot-test.timeout"
            )
        if CLOUD_INIT_DONE.search(line):
            checks += _cloud_init_checks(vm, ctx, test.flavor, deadline)
            agent = "both" if report else "cloud-init"
            break
        found = find_report(line)
        if found is None or (found.status == "no-context" and test.flavor is not IsoFlavor.OPENNEBULA):
            continue  # a NoCloud/config-drive seed is cloud-init's: wait for it
        report = found
        checks = _agent_checks(vm, report, ctx, demo=test.template is None)
        if not report.cloud_init:
            agent = "imagekit"
            break
    return BootResult(
        test.image, firmware, accel, agent, seconds, report, tuple(checks), tuple(n.mac for n in nics)
    )


def _agent_checks(vm: QemuVm, report: AgentReport, ctx: ResolvedContext, *, demo: bool) -> list[str]:
    checks = verify_report(report, dict(ctx.variables), demo=demo)
    if demo:
        if DEMO_MARKER not in vm.console():
            raise VerificationError(
                "the demo init script's marker is not on the console", rule="boot-test.init"
            )
        checks.append("init script marker on the console")
    return checks


def _cloud_init_checks(vm: QemuVm, ctx: ResolvedContext, flavor: IsoFlavor, deadline: float) -> list[str]:
    want = expect_cloud_init(ctx, flavor)
    if want.hostname and not shown_hostnames(vm.console()):
        # No host key fingerprints (an image configured without them): a serial getty may
        # still print its prompt after cloud-init's last line.
        vm.wait_for_text(LOGIN_PROMPT, max(0.0, deadline - vm.elapsed()))
    return verify_cloud_init(vm.console(), want)
