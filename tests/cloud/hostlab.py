"""A blank VM (tests/cloud/blank.py) deployed on a simulated host of the SSH lab
(tests/cloud/sshd.py) as the dispatcher would: placed there, then ``hostvm.deploy_on_host``
(``tests/cloud/test_dispatch.py`` goes through ``vm create`` and the dispatcher itself)."""

from __future__ import annotations

from pathlib import Path

from cloud import deploy, hostvm, images, monitoring, quotas
from cloud.deploy import CreateRequest
from cloud.deployment import Deployment
from cloud.hosts import Host, HostStore, host_spec
from cloud.model import parse_vm_template
from cloud.siteconfig import load_site
from cloud.store import VmRecord, VmStore
from context.render import prepare_context
from imagekit.state import State

from .sshd import SimulatedHost, SshLab


def add_host(state: State, lab: SshLab, name: str, host: SimulatedHost) -> Host:
    """A ``--vmm qemu --tm ssh`` host, monitored once (its HYPERVISOR known)."""
    HostStore(state).create(host_spec(name, im="kvm", vmm="qemu", tm="ssh", address=host.address))
    return monitoring.monitor(state, name, settings=load_site(lab.etc).ssh)


def deploy_blank(state: State, template: Path, lab: SshLab, host: Host, *, hold: bool = False) -> VmRecord:
    request = CreateRequest.from_file(template, site=load_site(lab.etc), hold=hold)
    vm = parse_vm_template(request.template)
    bases = images.resolve_images(
        vm, images=(), state=state, template_dir=request.base_dir, policy=lambda: request.site.policy
    )
    quota, store = quotas.Quotas(state, request.site.default_limits), VmStore(state)
    ctx = prepare_context(
        request.template,
        state=state,
        settings=request.site.oned,
        base_dir=request.base_dir,
        keep=True,
        then=lambda db, ctx: deploy._insert(store, db, vm, ctx, request, quota),  # the row, as vm create
    )
    with state.transaction() as db:  # placed there (what the scheduler writes)
        db.execute("UPDATE cloud_vms SET hid = ? WHERE vmid = ?", (host.hid, ctx.vmid))
    work = Deployment(ctx.vmid, vm, tuple(bases), ctx, hold, None, {})
    return hostvm.deploy_on_host(state, request.site, store.get(ctx.vmid), work)
