"""Oz TDL loader: schema, Oz's semantic rules, the ik: extension namespace, every error class."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from imagekit.errors import InputError
from imagekit.recipe import RecipeErrors, load_recipe
from imagekit.recipe.model import ContentSource, ContextAgent, Firmware, OutputFormat, Recipe
from imagekit.recipe.tdl import SCHEMA, disk_size_mib, strip_extensions

from ..conftest import FIXTURES
from .conftest import ANCHORS, REPO

HEAD = "<template>\n  <name>t</name>\n"
OS = (
    "  <os><name>Debian</name><version>12</version><arch>x86_64</arch>"
    "<install type='url'><url>http://deb.debian.org/debian/</url></install></os>\n"
)


def tdl(tmp_path: Path, body: str = "", *, head: str = HEAD, os: str = OS, name: str = "t.tdl") -> Path:
    path = tmp_path / name
    path.write_text(f"{head}{os}{body}</template>\n")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    err = caught.value
    return [str(e) for e in err.errors] if isinstance(err, RecipeErrors) else [str(err)]


@pytest.mark.usefixtures("anchors")
def test_vendored_schema_is_upstream() -> None:
    assert SCHEMA.read_bytes() == (ANCHORS / "oz" / "tdl.rng").read_bytes()


@pytest.mark.parametrize(
    ("text", "mib"),
    [("10", 10240), ("20G", 20480), ("1T", 1048576), ("16GiB", 16384), ("10GB", 9537), ("512MiB", 512),
     ("1 G", 1024), ("2048 mib", 2048), ("1000000B", 1)],
)  # fmt: skip
def test_disk_sizes_of_both_schema_patterns(text: str, mib: int) -> None:
    assert disk_size_mib(text) == mib


@pytest.mark.parametrize("text", ["", "G", "10M", "10X", "0", "-1", "1.5G"])
def test_bad_disk_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        disk_size_mib(text)


def test_defaults_and_order(tmp_path: Path) -> None:
    recipe = load_recipe(tdl(tmp_path))
    assert recipe.disk.size_mib == 10240
    assert recipe.firmware is Firmware.BIOS and recipe.formats == (OutputFormat.QCOW2,)
    own = load_recipe(FIXTURES / "recipes" / "commands.tdl")
    assert [c.name for c in own.post_commands] == ["first", "second", "third"]
    assert [r.persisted for r in own.repositories] == [False, True]
    assert all(not r.signed and not r.ssl_verify for r in own.repositories)


@pytest.mark.usefixtures("anchors")
def test_defaults_and_order_of_the_oz_examples() -> None:
    sorting = load_recipe(ANCHORS / "oz" / "examples" / "test-59-command-sorting.tdl")
    assert [c.name for c in sorting.post_commands] == ["cmd1", "cmd3", "cmd2"]
    persisted = load_recipe(ANCHORS / "oz" / "examples" / "test-43-persisted-repos.tdl")
    assert [r.persisted for r in persisted.repositories] == [False] * 6 + [True] * 6
    assert all(not r.signed and not r.ssl_verify for r in persisted.repositories)


def _extension_document(tmp_path: Path) -> Path:
    body = """
  <files><file name='/etc/x' ik:source='local'>/srv/x</file></files>
  <repositories><repository name='m' ik:mirrorlist='yes'><url>http://m/list</url></repository></repositories>
  <disk><size>3G</size></disk>
  <ik:firmware>uefi</ik:firmware>
  <ik:formats>raw vdi</ik:formats>
  <ik:kernel>generic</ik:kernel>
  <ik:context-agent>cloud-init</ik:context-agent>
  <ik:hostname>h</ik:hostname>
  <ik:users><ik:user name='bob' password='pw'>
    <ik:ssh-key>ssh-rsa AAAA bob</ik:ssh-key><ik:group>adm</ik:group>
  </ik:user></ik:users>
  <ik:cpus>2</ik:cpus><ik:memory>1024</ik:memory>
  <ik:partitions>
    <ik:partition mount='/' size='2G'/><ik:partition mount='/srv' size='1024MiB' type='ext3'/>
  </ik:partitions>
  <ik:variables><ik:variable name='A'>1</ik:variable></ik:variables>
  <ik:platform-commands><ik:command name='ec2-1' platform='ec2'>echo</ik:command></ik:platform-commands>
"""
    head = '<template xmlns:ik="https://imagekit.dev/tdl/1">\n  <name>t</name>\n'
    return tdl(tmp_path, body, head=head)


def test_extension_namespace(tmp_path: Path) -> None:
    path = _extension_document(tmp_path)
    recipe = load_recipe(path)
    assert recipe.firmware is Firmware.UEFI
    assert recipe.formats == (OutputFormat.RAW, OutputFormat.VDI)
    assert (recipe.kernel_flavour, recipe.context_agent, recipe.hostname) == (
        "generic",
        ContextAgent.CLOUD_INIT,
        "h",
    )
    assert recipe.users[0].ssh_keys == ("ssh-rsa AAAA bob",) and recipe.users[0].groups == ("adm",)
    assert (recipe.cpus, recipe.memory_mib, recipe.disk.size_mib) == (2, 1024, 3072)
    assert [(p.mount, p.size_mib, p.fstype) for p in recipe.disk.partitions] == [
        ("/", 2048, "ext4"),
        ("/srv", 1024, "ext3"),
    ]
    assert recipe.files[0].source is ContentSource.LOCAL and recipe.files[0].content == "/srv/x"
    assert recipe.repositories[0].mirrorlist == "http://m/list" and not recipe.repositories[0].url
    assert recipe.platform_commands[0].platform == "ec2"
    # The same document, stripped as documented, is valid against the vendored, unmodified upstream
    # schema (test_vendored_schema_is_upstream compares the two).
    upstream = etree.RelaxNG(etree.fromstring(SCHEMA.read_bytes()))
    document = etree.fromstring(path.read_bytes())
    assert not upstream.validate(document)
    assert upstream.validate(strip_extensions(document)), upstream.error_log


def test_extension_document_stripped_is_valid_for_debians_oz(tmp_path: Path, anchors: Path) -> None:
    document = etree.fromstring(_extension_document(tmp_path).read_bytes())
    debian = etree.RelaxNG(etree.fromstring((anchors / "oz" / "tdl-debian-0.17.0.rng").read_bytes()))
    assert debian.validate(strip_extensions(document))


def test_shipped_cloud_recipe_strips_to_plain_oz() -> None:
    document = etree.fromstring((REPO / "recipes" / "debian-12-cloud.tdl").read_bytes())
    upstream = etree.RelaxNG(etree.fromstring(SCHEMA.read_bytes()))
    assert upstream.validate(strip_extensions(document)), upstream.error_log


def test_xinclude(tmp_path: Path) -> None:
    (tmp_path / "pkgs.xml").write_text("<packages><package name='vim'/></packages>")
    body = '  <xi:include href="pkgs.xml" xmlns:xi="http://www.w3.org/2001/XInclude"/>\n'
    assert [p.name for p in load_recipe(tdl(tmp_path, body)).packages] == ["vim"]
    broken = '  <xi:include href="missing.xml" xmlns:xi="http://www.w3.org/2001/XInclude"/>\n'
    assert "expected resolvable XIncludes" in errors_of(tdl(tmp_path, broken, name="b.tdl"))[0]


CASES = [
    ("<template><name>", "expected well-formed XML"),
    (HEAD + OS + "  <colour/>\n</template>", ":4:3: colour: expected one of", "got unknown key 'colour'"),
    (HEAD + OS + "  <package/>\n</template>", "(did you mean 'packages'?)"),
    (HEAD + "</template>", "os: expected <os> (required), got nothing"),
    ("<template>" + OS + "</template>", "name: expected <name> (required)"),
    (HEAD + OS.replace("x86_64", "x86"), "os.arch: expected one of i386, x86_64"),
    (
        HEAD + OS.replace("<install type='url'>", "<install type='cd'>"),
        "os.install@type: expected url or iso, got 'cd'",
    ),
    (
        HEAD
        + OS.replace(
            "</url></install>", "</url><extras><file source='a' destination='b'/></extras></install>"
        ),
        "os.install.extras: expected extras only with install type iso",
    ),
    (
        HEAD
        + OS
        + "<repositories><repository name='r'><url>http://localhost/r</url></repository></repositories>",
        "expected a URL the guest can reach, got localhost",
    ),
    (
        HEAD
        + OS
        + "<repositories><repository name='r'><url>http://a/</url><signed>maybe</signed></repository></repositories>",
        "repositories.repository[0].signed: expected true, false, yes or no, got 'maybe'",
    ),
    (
        HEAD
        + OS
        + "<commands><command name='a' position='1'>x</command><command name='b'>y</command></commands>",
        "commands: expected a position on every command or on none, got a mix",
    ),
    (
        HEAD
        + OS
        + "<commands><command name='a' position='1'>x</command>"
        + "<command name='b' position='3'>y</command></commands>",
        "commands: expected positions 1..2 without gaps or repeats, got [1, 3]",
    ),
    (
        HEAD + OS + "<precommands><command name='a'>  </command></precommands>",
        "precommands.command[0]: expected a non-empty command, got nothing",
    ),
    (
        HEAD + OS + "<files><file name='/a' type='base64'>!!!</file></files>",
        "files.file[0]: expected base64 content",
    ),
    (
        HEAD + OS + "<disk><size>10M</size></disk>",
        "disk.size: expected a whole number with an optional unit",
    ),
    (
        HEAD.replace("<template>", "<template version='2.0'>") + OS,
        "template@version: expected a TDL version of at most 1.0",
    ),
    (HEAD.replace("<template>", "<template version='0.9'>") + OS, "expected what tdl.rng allows"),
    (HEAD.replace("<name>t</name>", "<name x='1'>t</name>") + OS, "expected what tdl.rng allows"),
    (
        HEAD + OS + "<packages><package/></packages>",
        "packages.package[0]@name: expected an attribute (required)",
    ),
    ("<recipe/>", "expected a <template> document, got <recipe>"),
    (
        HEAD + OS + "<files><file name='etc/x'>y</file></files>",
        "files.file[0]@name: expected an absolute path",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[1][:40])
def test_error_messages(tmp_path: Path, case: tuple[str, ...]) -> None:
    text = case[0] if "</template>" in case[0] or case[0].startswith("<recipe") else case[0] + "</template>"
    path = tmp_path / "bad.tdl"
    path.write_text(text)
    joined = "\n".join(errors_of(path))
    assert joined.startswith(f"{path}:")
    for expected in case[1:]:
        assert expected in joined


EXT_CASES = [
    ("<ik:firmware>efi</ik:firmware>", "ik:firmware: expected one of bios, uefi, hybrid, got 'efi'"),
    ("<ik:formats>qcow2 iso</ik:formats>", "ik:formats: expected formats from"),
    ("<ik:firmwear>uefi</ik:firmwear>", "(did you mean 'firmware'?)"),
    ("<ik:hostname>-bad-</ik:hostname>", "ik:hostname: expected a host name, got '-bad-'"),
    ("<ik:users><ik:user name='u'><ik:ssh-key>x</ik:ssh-key></ik:user></ik:users>", "a public key"),
    ("<ik:cpus>99</ik:cpus>", "ik:cpus: expected a whole number from 1 to 16, got '99'"),
    ("<ik:users><ik:user><ik:key>k</ik:key></ik:user></ik:users>", "ik:users.user[0]@name: expected a user"),
    ("<ik:partitions><ik:partition mount='/' size='1G'/></ik:partitions><disk><size>2</size></disk>",
     "disk.size: expected the sum of ik:partitions (1024 MiB), got 2048 MiB"),
]  # fmt: skip


@pytest.mark.parametrize("case", EXT_CASES, ids=lambda c: c[1][:40])
def test_extension_errors(tmp_path: Path, case: tuple[str, str]) -> None:
    head = '<template xmlns:ik="https://imagekit.dev/tdl/1">\n  <name>t</name>\n'
    joined = "\n".join(errors_of(tdl(tmp_path, case[0] + "\n", head=head)))
    assert case[1] in joined


def test_all_errors_of_a_file_in_one_run(tmp_path: Path) -> None:
    body = "  <colour/>\n  <disk><size>huge</size></disk>\n"
    path = tdl(tmp_path, body, os=OS.replace("x86_64", "sparc"))
    messages = errors_of(path)
    assert len(messages) == 3
    assert sorted(m.split(": ")[0].rsplit(":", 2)[1] for m in messages) == ["3", "4", "5"]


@pytest.mark.usefixtures("anchors")
def test_recipe_fields_from_anchors() -> None:
    examples = ANCHORS / "oz" / "examples"
    freebsd: Recipe = load_recipe(examples / "freebsd10.tdl")
    assert (freebsd.root_password, freebsd.disk.size_mib, freebsd.install and freebsd.install.kind) == (
        "blabla",
        1024,
        "iso",
    )
    assert load_recipe(examples / "win2k.tdl").os.product_key == "MY_KEY_HERE"
    pkg = load_recipe(examples / "test-11-description-packages-repositories.tdl").packages[0]
    assert (pkg.repository, pkg.file, pkg.arguments) == ("myrepo", "myfilename", "args")
    file = load_recipe(examples / "f18file.tdl").files[0]
    assert (file.source, file.content) == (
        ContentSource.URL,
        "https://www.kernel.org/pub/linux/kernel/README",
    )
