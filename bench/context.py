"""Contextualization throughput: template → resolved context → context.sh → CONTEXT ISO.

For 1,000 VM templates with two NICs each on two networks (in a temporary state directory):
first every VM leases both NICs (one state-database transaction each; timed on its own as
``lease_2_nics_ms``; ``vms_per_s_with_leases`` adds it back). Then, timed per VM: parse the
template, resolve CONTEXT (NETWORK=YES, ``$NIC[…]``, ``$NETWORK[…]``), render context.sh and
master the CONTEXT ISO in memory (``per_vm_ms``, ``vms_per_s``; ``iso_pycdlib_ms`` is the ISO
part). Then, on the same files, ``genisoimage -V CONTEXT -J -R`` as one subprocess per ISO.
Prints one JSON line.

    .venv/bin/python bench/context.py [--vms N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and since the file is
# named context.py, `import context` would import it instead of the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from context.contextsh import render_context_sh  # noqa: E402
from context.iso import IsoFlavor, build_iso  # noqa: E402
from context.leases import NetworkStore  # noqa: E402
from context.model import ResolvedContext  # noqa: E402
from context.network import network_from_template  # noqa: E402
from context.resolve import resolve_context  # noqa: E402
from context.template import load_template, parse_template  # noqa: E402
from context.vm import User, instantiate, lease_requests  # noqa: E402
from imagekit.run import run  # noqa: E402
from imagekit.state import State  # noqa: E402

NETWORKS = (
    'NAME = "public"\nTYPE = RANGED\nBRIDGE = br0\nNETWORK_ADDRESS = 10.1.0.0\nNETWORK_SIZE = B\n'
    'GATEWAY = "10.1.0.254"\nDNS = "10.1.0.2 8.8.8.8"\nNETWORK_MASK = "255.255.0.0"\n',
    'NAME = "private net"\nTYPE = RANGED\nBRIDGE = br1\nNETWORK_ADDRESS = 192.168.0.0\nNETWORK_SIZE = B\n',
)
VM_TEMPLATE = """NAME = "web-{n}"
CPU = 0.5
MEMORY = 512
DISK = [ SOURCE = "/var/lib/images/debian-{n}.qcow2", TARGET = "vda" ]
NIC = [ NETWORK = "public", MODEL = "virtio" ]
NIC = [ NETWORK = "private net" ]
CONTEXT = [
  NETWORK = "YES",
  HOSTNAME = "$NAME",
  IP_PUBLIC = "$NIC[IP, NETWORK=\\"public\\"]",
  IP_PRIVATE = "$NIC[IP, NETWORK=\\"private net\\"]",
  DNS = "$NETWORK[DNS, NETWORK=\\"public\\"]",
  SSH_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIbenchkey{n} bench@host",
  MOTD = "it's VM $VMID - say \\"hi\\"",
  FILES = "{files}",
  TARGET = "hdb"
]
"""


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vms", type=int, default=1000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="imagekit-bench-context-") as tmp:
        root = Path(tmp)
        state = State.open(root / "state")
        store = NetworkStore(state)
        for text in NETWORKS:
            store.create(network_from_template(parse_template(text, "bench.net")))
        files = root / "files"
        files.mkdir()
        (files / "init.sh").write_text("#!/bin/sh\necho contextualized > /run/bench\n")
        (files / "app.conf").write_text("workers = 4\n" * 20)
        paths = []
        for n in range(args.vms):
            path = root / "vms" / f"vm-{n}.one"
            path.parent.mkdir(exist_ok=True)
            path.write_text(VM_TEMPLATE.format(n=n, files=f"{files / 'init.sh'} {files / 'app.conf'}"))
            paths.append(path)
        owner = User(0, "oneadmin", 0, "oneadmin")

        # Creating the VMs: each leases its two NICs in one state-database transaction and
        # keeps them. Timed on its own: it is bound by SQLite's commit (an fsync), not by us.
        lease_times: list[float] = []
        created = []
        for vmid, path in enumerate(paths):
            t0 = time.perf_counter()
            requests = lease_requests(load_template(path))
            leased = store.lease_all(vmid, [(r.network, r.ip) for r in requests])
            lease_times.append(time.perf_counter() - t0)
            created.append((path, {r.nic_index: lease for r, lease in zip(requests, leased, strict=True)}))
        vnets = {v.id: v for v in store.list()}

        # Contextualizing them: template → resolved CONTEXT → context.sh → ISO in memory.
        per_vm: list[float] = []
        per_iso: list[float] = []
        contexts: list[tuple[ResolvedContext, str]] = []
        started = time.perf_counter()
        for vmid, (path, leases) in enumerate(created):
            t0 = time.perf_counter()
            tmpl = load_template(path)
            networks = {i: vnets[lease.network_id] for i, lease in leases.items()}
            vm = instantiate(tmpl, vmid=vmid, user=owner, leases=leases, networks=networks)
            variables = resolve_context(vm)
            files_on_iso = tuple(Path(p) for p in variables["FILES"].split())
            ctx = ResolvedContext(vmid, variables, files_on_iso, tuple(leases[i] for i in sorted(leases)))
            text = render_context_sh(variables)
            t1 = time.perf_counter()
            iso = build_iso(ctx, IsoFlavor.OPENNEBULA, context_sh=text)
            t2 = time.perf_counter()
            per_vm.append(t2 - t0)
            per_iso.append(t2 - t1)
            contexts.append((ctx, text))
            assert iso[0x8001:0x8006] == b"CD001"
        elapsed = time.perf_counter() - started

        genisoimage: list[float] = []
        out = root / "out.iso"
        for ctx, text in contexts:
            src = root / "iso" / str(ctx.vmid)
            src.mkdir(parents=True)
            (src / "context.sh").write_text(text)
            for f in ctx.files:
                (src / f.name).write_bytes(f.read_bytes())
            t0 = time.perf_counter()
            run(["genisoimage", "-quiet", "-o", out, "-V", "CONTEXT", "-J", "-R", src])
            genisoimage.append(time.perf_counter() - t0)

    result = {
        "bench": "context",
        "vms": args.vms,
        "nics_per_vm": 2,
        "per_vm_ms": {"p50": _ms(statistics.median(per_vm)), "p99": _ms(_percentile(per_vm, 0.99))},
        "vms_per_s": round(args.vms / elapsed, 1),
        # The same, counting each VM's lease transaction too (what `context iso` pays per VM).
        "vms_per_s_with_leases": round(args.vms / (elapsed + sum(lease_times)), 1),
        "lease_2_nics_ms": {
            "p50": _ms(statistics.median(lease_times)),
            "p99": _ms(_percentile(lease_times, 0.99)),
        },
        "iso_pycdlib_ms": {"p50": _ms(statistics.median(per_iso)), "p99": _ms(_percentile(per_iso, 0.99))},
        "iso_genisoimage_ms": {
            "p50": _ms(statistics.median(genisoimage)),
            "p99": _ms(_percentile(genisoimage, 0.99)),
        },
        "iso_speedup_p50": round(statistics.median(genisoimage) / statistics.median(per_iso), 1),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
