"""The cloud site's configuration, loaded once where a command or a server starts, and passed down.

    site = load_site()                      # etc/ (IMAGEKIT_ETC, /etc/imagekit): read here, once
    create_vm(CreateRequest(template, base_dir, site=site), state=state)

``load_site`` is the one place that calls the parsers of the files in ``etc/`` (each a pure
function, path → frozen value: ``context.settings.load_settings``, ``cloud.hooks.load_hooks``,
``cloud.quotas.load_default_limits``, ``cloud.monitoring.find_probes``,
``cloud.monitoring.monitoring_interval``, ``cloud.remote.load_ssh_settings``,
``cloud.sched_conf.load_sched_settings``,
``cloud.instance_types.load_instance_types``, ``marketplace.policy.load_policy``);
``tests/test_siteconfig.py`` fails when another module calls them. What a VM needs only in some
cases is parsed at its first use and kept: the instance types (an EC2 or OCCI request, ``vm
create --type``) and the marketplace's site policy (a ``marketplace:`` disk); a site without
those files runs every other VM as before. A running server never re-reads ``etc/``: a change
takes effect at its restart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.hooks import Hook, load_hooks
from cloud.monitoring import find_probes, monitoring_interval
from cloud.quotas import Limits, load_default_limits
from cloud.remote import SshSettings, load_ssh_settings
from cloud.sched_conf import SchedSettings, load_sched_settings
from context.settings import OnedSettings, load_settings
from imagekit.locations import etc_dir

if TYPE_CHECKING:
    from cloud.instance_types import InstanceTypes
    from marketplace.policy import SitePolicy

POLICY_NAME = "policy.cfg"


@dataclass(frozen=True)
class SiteConfig:
    etc: Path
    oned: OnedSettings  # oned.conf: MAC_PREFIX, CONTEXT_*_DIRS, device prefixes …
    hooks: tuple[Hook, ...]  # oned.conf's VM_HOOKs
    default_limits: Limits  # quotas.conf's DEFAULT_QUOTA
    probes: tuple[Path, ...]  # im_probes.d/'s executables, in name order
    ssh: SshSettings  # hosts.conf: how the front end reaches its hosts
    monitoring_interval: float  # oned.conf's HOST_MONITORING_INTERVAL, seconds
    sched: SchedSettings  # sched.conf: the scheduler's interval and per-pass limits
    policy_path: Path  # the marketplace's site policy (vm create --policy, else etc/policy.cfg)

    @functools.cached_property
    def instance_types(self) -> InstanceTypes:
        """instance-types.conf, parsed at the first request that names a type, then kept."""
        from cloud.instance_types import load_instance_types

        return load_instance_types(self.etc)

    @functools.cached_property
    def policy(self) -> SitePolicy:
        """The site policy, parsed at the first ``marketplace:`` disk, then kept."""
        from marketplace.policy import load_policy  # the site stage: imported only for such disks

        return load_policy(self.policy_path)

    @functools.cached_property
    def mirrors(self) -> tuple[str, ...]:
        """The policy's mirrors; none without a policy file (a marketplace image is then
        refused when a VM needs it)."""
        return self.policy.mirrors if self.policy_path.is_file() else ()


def load_site(etc: Path | None = None, *, policy: Path | None = None) -> SiteConfig:
    """The site in ``etc`` (default: ``imagekit.locations.etc_dir()``), ``policy`` overriding
    its ``policy.cfg``."""
    base = etc_dir(etc)
    return SiteConfig(
        etc=base,
        oned=load_settings(base),
        hooks=load_hooks(base),
        default_limits=load_default_limits(base),
        probes=find_probes(base),
        ssh=load_ssh_settings(base),
        monitoring_interval=monitoring_interval(base),
        sched=load_sched_settings(base),
        policy_path=policy if policy is not None else base / POLICY_NAME,
    )
