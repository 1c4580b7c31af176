"""BoxGrinder loader: merge rules, variables, legacy shapes and every error class."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imagekit.errors import InputError
from imagekit.recipe import RecipeErrors, load_recipe
from imagekit.recipe.model import ContentSource, Firmware, OutputFormat, Recipe
from imagekit.recipe.yamlnodes import repair

from .conftest import ANCHORS


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(path: Path, env: dict[str, str] | None = None) -> Recipe:
    return load_recipe(path, env=env or {})


def errors_of(path: Path) -> list[str]:
    with pytest.raises(InputError) as caught:
        load(path)
    err = caught.value
    return [str(e) for e in err.errors] if isinstance(err, RecipeErrors) else [str(err)]


# --- tolerance -------------------------------------------------------------------------------


def test_repair_quotes_at_groups_and_strips_tabs() -> None:
    assert repair("packages:\n  - @base\n  - vim\n") == 'packages:\n  - "@base"\n  - vim\n'
    assert repair("os:\n  version: 14\t\n") == "os:\n  version: 14\n"
    assert repair('  - "@quoted"') == '  - "@quoted"'


@pytest.mark.usefixtures("anchors")
def test_real_files_pyyaml_rejects_still_load() -> None:
    examples = ANCHORS / "boxgrinder" / "examples"
    assert [p.name for p in load(examples / "0.8.x.appl").packages][:1] == ["@base"]
    assert load(examples / "modular" / "_os_password.appl").os.version == "14"
    assert [p.name for p in load(examples / "boxgrinder-base.appl").packages][0] == "@core"


def test_legacy_08_packages_are_flattened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path,
        "old.appl",
        """
        name: old
        packages:
          includes: [a, b]
          excludes: [c]
        """,
    )
    assert [p.name for p in load(path).packages] == ["a", "b"]
    assert "excludes" in caplog.text


# --- inheritance -----------------------------------------------------------------------------


def test_merge_rules(tmp_path: Path) -> None:
    write(
        tmp_path,
        "parent.appl",
        """
        name: parent
        os: {name: fedora, version: 15, password: parentpw}
        hardware:
          cpus: 4
          memory: 512
          partitions:
            "/": {size: 3, type: ext3, options: noatime}
            "/var": {size: 1}
        packages: [a, b]
        repos:
          - {name: p, baseurl: "http://p/"}
        post:
          base: [one]
          ec2: [e1]
        variables: {X: parent, Y: parent}
        default_repos: false
        imagekit: {firmware: uefi, formats: [raw], hostname: parent}
        """,
    )
    child = write(
        tmp_path,
        "child.appl",
        """
        name: child
        appliances: [parent]
        os: {name: debian, version: 12}
        hardware:
          cpus: 2
          memory: 1024
          partitions:
            "/": {size: 2, type: ext4}
        packages: [c, a]
        repos:
          - {name: c, mirrorlist: "http://c/"}
        post:
          base: ["two #X# #Y#"]
        variables: {X: child}
        imagekit: {hostname: child}
        """,
    )
    recipe = load(child)
    assert recipe.name == "child"
    assert (recipe.os.name, recipe.os.version, recipe.root_password) == ("debian", "12", "parentpw")
    assert (recipe.cpus, recipe.memory_mib) == (4, 1024)
    root, var = recipe.disk.partitions
    assert (root.mount, root.size_mib, root.fstype, root.options) == ("/", 3072, "ext4", "defaults")
    assert (var.mount, var.size_mib) == ("/var", 1024)
    assert recipe.disk.size_mib == 4096
    assert [p.name for p in recipe.packages] == ["a", "b", "c"]
    assert [r.name for r in recipe.repositories] == ["p", "c"]
    assert [c.script for c in recipe.post_commands] == ["one", "two child parent"]
    assert [(c.platform, c.script) for c in recipe.platform_commands] == [("ec2", "e1")]
    assert recipe.default_repos is False
    assert recipe.firmware is Firmware.UEFI and recipe.formats == (OutputFormat.RAW,)
    assert recipe.hostname == "child"
    assert dict(recipe.variables) == {"X": "child", "Y": "parent"}


def test_diamond_includes_the_shared_parent_once(tmp_path: Path) -> None:
    write(tmp_path, "base.appl", "name: base\npackages: [shared]\n")
    write(tmp_path, "left.appl", "name: left\nappliances: [base]\npackages: [l]\n")
    write(tmp_path, "right.appl", "name: right\nappliances: [base]\npackages: [r]\n")
    top = write(tmp_path, "top.appl", "name: top\nappliances: [left, right]\n")
    assert [p.name for p in load(top).packages] == ["shared", "l", "r"]


def test_inheritance_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.appl", "name: a\nappliances: [b]\n")
    write(tmp_path, "b.appl", "name: b\nappliances: [a]\n")
    [message] = errors_of(tmp_path / "a.appl")
    assert (
        "b.appl:2:14: appliances[0]: expected no inheritance cycle, got a.appl → b.appl → a.appl" in message
    )


def test_missing_parent_and_errors_in_a_parent_name_that_file(tmp_path: Path) -> None:
    write(tmp_path, "bad.appl", "name: bad\nhardware:\n  memory: 100\n")
    child = write(tmp_path, "child.appl", "name: child\nappliances: [bad, nowhere]\n")
    messages = errors_of(child)
    assert any(
        m.endswith("bad.appl:3:11: hardware.memory: expected a multiple of 64, got 100") for m in messages
    )
    assert any(
        ":2:19: appliances[1]: expected an appliance file" in m and "nowhere.appl" in m for m in messages
    )


# --- variables -------------------------------------------------------------------------------


def test_variables_builtins_environment_and_nesting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "v.appl",
        """
        name: v
        os: {name: debian, version: 12}
        variables:
          A: "#B#-#B#"
          B: "#C#"
          C: c
        post:
          base:
            - "#A# #OS_NAME# #OS_VERSION# #ARCH# #BASE_ARCH# #FROM_ENV# #UNKNOWN#"
        imagekit: {arch: i386}
        """,
    )
    [cmd] = load(path, env={"FROM_ENV": "env"}).post_commands
    assert cmd.script == "c-c debian 12 i386 i386 env #UNKNOWN#"


def test_variable_cycle_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "v.appl", 'name: v\nvariables: {A: "#B#", B: "x#A#"}\npost: {base: ["#A#"]}\n')
    [message] = errors_of(path)
    assert "variables: expected variables without a cycle, got A → B → A" in message


def test_variables_deeper_than_twenty_are_an_error(tmp_path: Path) -> None:
    chain = "\n".join(f'  V{i}: "#V{i + 1}#"' for i in range(25))
    path = write(tmp_path, "v.appl", f'name: v\nvariables:\n{chain}\n  V25: end\npost: {{base: ["#V0#"]}}\n')
    [message] = errors_of(path)
    assert "nested at most 20 deep" in message


# --- files and extensions --------------------------------------------------------------------


def test_files_keep_their_path_under_the_destination(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.appl",
        """
        name: f
        files:
          "/opt": [local.txt, /etc/hosts, "http://example.com/a/b.tar.gz"]
        imagekit:
          files:
            - {path: /etc/motd, raw: hello}
            - {path: /etc/empty, base64: }
        """,
    )
    files = load(path).files
    assert [(f.path, f.source) for f in files] == [
        ("/opt/local.txt", ContentSource.LOCAL),
        ("/opt/etc/hosts", ContentSource.LOCAL),
        ("/opt/b.tar.gz", ContentSource.URL),
        ("/etc/motd", ContentSource.RAW),
        ("/etc/empty", ContentSource.BASE64),
    ]
    assert files[0].content == str(tmp_path / "local.txt")
    assert files[4].content == ""


def test_users_and_builder_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.appl",
        """
        name: u
        imagekit:
          firmware: hybrid
          formats: [qcow2, vmdk]
          kernel: generic
          context_agent: both
          hostname: box
          kernel_params: console=ttyS0
          pre: ["echo pre"]
          users:
            - {name: alice, password: pw, groups: [sudo], ssh_keys: ["ssh-ed25519 AAAA alice"]}
        """,
    )
    recipe = load(path)
    assert recipe.firmware is Firmware.HYBRID
    assert recipe.formats == (OutputFormat.QCOW2, OutputFormat.VMDK)
    assert (recipe.kernel_flavour, recipe.context_agent.value, recipe.hostname) == ("generic", "both", "box")
    assert recipe.os.kernel_params == "console=ttyS0"
    assert [c.script for c in recipe.pre_commands] == ["echo pre"]
    [user] = recipe.users
    assert (user.name, user.password, user.groups, user.ssh_keys) == (
        "alice",
        "pw",
        ("sudo",),
        ("ssh-ed25519 AAAA alice",),
    )


# --- errors ----------------------------------------------------------------------------------

CASES = [
    ("name: [x\n", "2:1: expected valid YAML"),
    ("name: n\nhardwear: {}\n", "2:1: hardwear: expected one of", "(did you mean 'hardware'?)"),
    (
        "name: n\nhardware: {memroy: 64}\n",
        "2:12: hardware.memroy: expected one of cpus, memory, partitions",
        "did you mean 'memory'",
    ),
    ("name: n\nhardware: {memory: 100}\n", "2:20: hardware.memory: expected a multiple of 64, got 100"),
    ("name: n\nhardware: {cpus: 17}\n", "hardware.cpus: expected an integer from 1 to 16, got 17"),
    ("name: n\nhardware: {cpus: two}\n", "hardware.cpus: expected an integer, got a string 'two'"),
    ("name: " + "x" * 36 + "\n", "1:7: name: expected at most 35 characters, got 36"),
    ("summary: s\n", "name: expected a name (required), got nothing"),
    ("name: n\nos: {name: debian}\n", "os.version: expected a value (required), got nothing"),
    ("name: n\nrepos: [{name: r}]\n", "repos[0]: expected exactly one of baseurl, mirrorlist, got neither"),
    ("name: n\nrepos: [{name: r, baseurl: 'http://a', mirrorlist: 'http://b'}]\n", "got both"),
    ("name: n\nrepos: [{name: r, baseurl: 'gopher://a'}]\n", "repos[0].baseurl: expected text matching"),
    ("name: n\nrepos: [{name: 'bad name', baseurl: 'http://a'}]\n", "repos[0].name: expected text matching"),
    ("name: n\npackages: ['bad/pkg']\n", "packages[0]: expected text matching"),
    (
        "name: n\nhardware: {partitions: {'/': {size: 1, type: xfs}}}\n",
        "type: expected one of ext3, ext4, got 'xfs'",
    ),
    (
        "name: n\nhardware: {partitions: {'/': {size: 0}}}\n",
        "size: expected a number of at least 0.01, got 0",
    ),
    ("name: n\nhardware: {partitions: {'home': {size: 1}}}\n", "expected an absolute mount point"),
    ("name: n\nappliances: ['a/b']\n", "appliances[0]: expected text matching"),
    ("name: n\ndefault_repos: maybe\n", "default_repos: expected true or false, got a string 'maybe'"),
    ("name: n\npackages: {a: 1}\n", "packages.a: expected one of excludes, includes, got unknown key 'a'"),
    ("name: n\npost: [a]\n", "post: expected a mapping, got a list"),
    (
        "name: n\nimagekit: {firmware: efi}\n",
        "imagekit.firmware: expected one of bios, uefi, hybrid, got 'efi'",
    ),
    ("name: n\nimagekit: {formats: [iso]}\n", "imagekit.formats[0]: expected one of raw, qcow2"),
    ("name: n\nimagekit: {formats: []}\n", "expected at least one output format"),
    ("name: n\nimagekit: {users: [{name: Bad User}]}\n", "imagekit.users[0].name: expected text matching"),
    ("name: n\nimagekit: {files: [{path: /a}]}\n", "imagekit.files[0]: expected a path and exactly one of"),
    ("name: n\nfiles: {'opt': [x]}\n", "files: expected an absolute destination, got 'opt/x'"),
    ("name: n\nname: m\n", "2:1: name: expected each key once"),
    ("name: n\nimagekit: {hostname: web_1}\n", "imagekit.hostname: expected a host name, got 'web_1'"),
    (
        "name: n\nimagekit: {users: [{name: a, ssh_keys: [nope]}]}\n",
        "imagekit.users.a.ssh_keys: expected a public key",
    ),
    (
        "name: n\nimagekit: {install: {url: a, iso: b}}\n",
        "imagekit.install: expected url, or iso with at most",
    ),
    ("- a\n", "1:1: expected a mapping, got a list"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[1][:40])
def test_error_messages(tmp_path: Path, case: tuple[str, ...]) -> None:
    path = write(tmp_path, "bad.appl", case[0])
    joined = "\n".join(errors_of(path))
    assert joined.startswith(str(path) + ":") or joined.startswith(str(path))
    for expected in case[1:]:
        assert expected in joined


def test_all_errors_of_a_file_in_one_run(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.appl",
        """
        name: many
        hardware: {memory: 100, cpus: 0}
        repos: [{name: r}]
        colour: blue
        """,
    )
    messages = errors_of(path)
    assert len(messages) == 4
    assert all(m.startswith(f"{path}:") for m in messages)


def test_unreadable_and_unknown_suffix(tmp_path: Path) -> None:
    [message] = errors_of(tmp_path / "missing.appl")
    assert "expected a readable UTF-8 file" in message
    (tmp_path / "binary.appl").write_bytes(b"\xff\xfe\x00")
    assert "expected a readable UTF-8 file" in errors_of(tmp_path / "binary.appl")[0]
    with pytest.raises(InputError, match="expected a recipe file ending in one of"):
        load_recipe(tmp_path / "recipe.json")


def test_yaml_suffix_and_inheritance_keep_the_suffix(tmp_path: Path) -> None:
    write(tmp_path, "base.yml", "name: base\nos: {name: debian, version: bookworm}\n")
    child = write(tmp_path, "child.yml", "name: child\nappliances: [base]\n")
    assert load(child).os.version == "bookworm"
    (tmp_path / "t.xml").write_text((tmp_path / "child.yml").read_text())
    with pytest.raises(InputError, match="expected well-formed XML"):
        load_recipe(tmp_path / "t.xml")
