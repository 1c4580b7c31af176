"""The site's configuration is parsed once (``cloud/siteconfig.py``): the parsers of ``etc/`` are
called from the loading places only, a loaded site is what the pipeline uses (a file changed
afterwards is not read), and the front doors write no template to read it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cloud.siteconfig import load_site
from cloud.store import VmStore
from context.template import parse_template

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("imagekit", "context", "marketplace", "cloud")
# parser → the modules that may call it: where a command or a server starts.
COMMANDS_OF = {
    "context": ("context/commands/context.py", "context/commands/net.py"),
    "marketplace": tuple(str(p.relative_to(REPO)) for p in (REPO / "marketplace" / "commands").glob("*.py")),
}
LOADING_PLACES = {
    "load_hooks": ("cloud/siteconfig.py",),
    "load_default_limits": ("cloud/siteconfig.py",),
    "find_probes": ("cloud/siteconfig.py",),
    "load_instance_types": ("cloud/siteconfig.py",),
    "load_settings": ("cloud/siteconfig.py", *COMMANDS_OF["context"]),
    "load_policy": ("cloud/siteconfig.py", *COMMANDS_OF["marketplace"]),
    "load_config": COMMANDS_OF["marketplace"],
}


def _calls(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in LOADING_PLACES:
                found.append((name, node.lineno))
    return found


def test_the_configuration_parsers_are_called_where_a_command_starts_only() -> None:
    stray = [
        f"{where}:{line} calls {name}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if (where := str(path.relative_to(REPO)))
        for name, line in _calls(path)
        if where not in LOADING_PLACES[name]
    ]
    assert not stray, f"take the parsed value (cloud.siteconfig.SiteConfig) instead: {stray}"


def test_the_grep_sees_a_call(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from cloud import hooks\nx = hooks.load_hooks(p)\ny = load_policy()\n")
    assert _calls(module) == [("load_hooks", 2), ("load_policy", 3)]


def _etc(tmp_path: Path, oned: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "oned.conf").write_text(oned)
    (etc / "quotas.conf").write_text("DEFAULT_QUOTA = [ VMS = 3 ]\n")
    probes = etc / "im_probes.d"
    probes.mkdir()
    for name in ("b", "a"):
        (probes / name).write_text("#!/bin/sh\necho X=1\n")
        (probes / name).chmod(0o755)
    (probes / "not-executable").write_text("")
    return etc


def test_load_site_parses_every_file_once(tmp_path: Path) -> None:
    hook = 'VM_HOOK = [ NAME = "n", ON = "CREATE", COMMAND = "/bin/true", ARGUMENTS = "$VMID" ]\n'
    etc = _etc(tmp_path, 'MAC_PREFIX = "0a:0b"\n' + hook)
    site = load_site(etc)
    assert site.etc == etc and site.oned.mac_prefix == "0a:0b"
    assert [h.name for h in site.hooks] == ["n"] and site.default_limits.vms == 3
    assert site.probes == (etc / "im_probes.d" / "a", etc / "im_probes.d" / "b")
    assert site.policy_path == etc / "policy.cfg" and site.mirrors == ()  # no policy file
    (etc / "oned.conf").write_text('MAC_PREFIX = "zz"\n')  # a change after the start …
    (etc / "quotas.conf").write_text("DEFAULT_QUOTA = [ BOGUS = 1 ]\n")
    assert site.oned.mac_prefix == "0a:0b" and site.default_limits.vms == 3  # … is not seen


def test_instance_types_and_policy_are_parsed_at_first_use_then_kept(tmp_path: Path) -> None:
    """A site without instance-types.conf or policy.cfg runs other VMs; once parsed, a type
    table is kept (a front door re-reads nothing per request)."""
    etc = _etc(tmp_path)
    site = load_site(etc)
    with pytest.raises(Exception, match="no such file"):
        _ = site.instance_types
    (etc / "instance-types.conf").write_text('VM_TYPE = [ NAME = "t", TEMPLATE = "t.one" ]\n')
    (etc / "instance-types").mkdir()
    (etc / "instance-types" / "t.one").write_text('CPU = "1"\n')
    first = load_site(etc).instance_types
    assert first.names == ["t"]
    site = load_site(etc)
    assert site.instance_types is site.instance_types  # parsed once
    (etc / "instance-types.conf").write_text("")
    assert site.instance_types.names == ["t"]


def test_create_vm_takes_the_parsed_template_and_the_site(tmp_path: Path) -> None:
    """No file: the template exists only parsed (a front door's); the site's hooks are the
    ones resolved, although oned.conf changed after the site was loaded."""
    from cloud.deploy import CreateRequest, create_vm
    from imagekit.state import State

    hook = 'VM_HOOK = [ NAME = "n", ON = "CREATE", COMMAND = "/bin/true", ARGUMENTS = "$VMID $NAME" ]\n'
    etc = _etc(tmp_path, hook)
    site = load_site(etc)
    (etc / "oned.conf").write_text("")
    state = State.open(tmp_path / "state")
    template = parse_template('NAME = "only-parsed"\nMEMORY = 64\nCPU = 1\n', "front door")
    record = create_vm(CreateRequest(template, tmp_path, site, hold=True), state=state)
    assert record.name == "only-parsed" and record.template == "front door"
    assert record.info["hooks"] == {"CREATE": [["n", "/bin/true", str(record.vmid), "only-parsed"]]}
    assert [r.vmid for r in VmStore(state).list()] == [record.vmid]
