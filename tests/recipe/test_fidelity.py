"""Recipes behave as BoxGrinder and Oz did (issue 11, points 11–13); each test cites the source.

BoxGrinder: ``boxgrinder/boxgrinder-core`` at 676463ff (``helpers/appliance-config-helper.rb``)
and 120f3063 (``models/appliance-config.rb``); Oz: ``clalancette/oz`` at b609f75 (``oz/TDL.py``).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from lxml import etree

from imagekit.recipe import load_recipe
from imagekit.recipe.model import Recipe, decode_base64
from imagekit.recipe.tdl import relaxng

from .test_appl import errors_of, load, write

OS_DEBIAN = "os: {name: debian, version: '12'}\n"


def partitions(recipe: Recipe) -> dict[str, tuple[int, str, str]]:
    return {p.mount: (p.size_mib, p.fstype, p.options) for p in recipe.disk.partitions}


# --- point 11: built-ins after os.* is substituted -----------------------------------------


def test_os_version_from_the_environment_is_what_OS_VERSION_says(tmp_path: Path) -> None:
    """appliance-config-helper.rb:68-69 stores the os.name/os.version strings themselves as
    OS_NAME/OS_VERSION; substitute_variables (:98-121) then rewrites every leaf string in place
    (appliance-config.rb:97-114 walks the os hash too), looking in the environment second
    (:116), so ``os.version: '#CUSTOM_A#'`` makes #OS_VERSION# the environment's value."""
    path = write(
        tmp_path,
        "a.appl",
        """
        name: a
        os: {name: "#DISTRO#", version: "#CUSTOM_A#"}
        variables: {DISTRO: debian}
        post: {base: ["echo #OS_NAME# #OS_VERSION#"]}
        """,
    )
    recipe = load(path, env={"CUSTOM_A": "12"})
    assert (recipe.os.name, recipe.os.version) == ("debian", "12")
    assert [c.script for c in recipe.post_commands] == ["echo debian 12"]


def test_builtins_win_over_appliance_variables_of_the_same_name(tmp_path: Path) -> None:
    """appliance-config-helper.rb:62-71: the appliance variables are merged first, then
    OS_NAME, OS_VERSION, ARCH and BASE_ARCH are assigned over them."""
    path = write(
        tmp_path,
        "a.appl",
        f"""
        name: a
        {OS_DEBIAN}
        variables: {{OS_NAME: mine, ARCH: sparc, MINE: "#OS_NAME#"}}
        post: {{base: ["#OS_NAME# #ARCH# #MINE#"]}}
        """,
    )
    assert [c.script for c in load(path).post_commands] == ["debian x86_64 debian"]


# --- point 13: BoxGrinder's other rules ------------------------------------------------------


def test_a_child_partition_without_type_resets_to_ext4(tmp_path: Path) -> None:
    """appliance-config-helper.rb:139-147: for a mount point already seen, a ``type`` drops the
    earlier options when it differs (:143), no ``type`` sets default_filesystem_type (:146),
    which is ext4 (appliance-config.rb:117-118); later options replace earlier ones (:160)."""
    write(
        tmp_path,
        "base.appl",
        """
        name: base
        hardware:
          partitions:
            "/": {size: 2, type: ext3, options: noatime}
            "/srv": {size: 1, type: ext3, options: nodev}
            "/var": {size: 1, type: ext3, options: nosuid}
        """,
    )
    child = write(
        tmp_path,
        "child.appl",
        """
        name: child
        appliances: [base]
        hardware:
          partitions:
            "/": {size: 1}
            "/srv": {size: 1, type: ext4}
            "/var": {size: 1, type: ext3}
        """,
    )
    assert partitions(load(child)) == {
        "/": (2048, "ext4", "noatime"),
        "/srv": (1024, "ext4", "defaults"),
        "/var": (1024, "ext3", "nosuid"),
    }


def test_every_file_carries_a_default_root_that_resets_its_type(tmp_path: Path) -> None:
    """appliance-config.rb:42 starts every config with ``{"/" => {'size' => 1}}`` and
    appliance-definition-helper.rb:113-116 only adds the file's partitions to it, so a file
    naming only /home still has a 1 GB root, and a child that says nothing about "/" resets
    the parent's root type to ext4 (appliance-config-helper.rb:146)."""
    only_home = write(tmp_path, "home.appl", 'name: home\nhardware: {partitions: {"/home": {size: 2}}}\n')
    assert partitions(load(only_home)) == {
        "/": (1024, "ext4", "defaults"),
        "/home": (2048, "ext4", "defaults"),
    }
    write(tmp_path, "base.appl", 'name: base\nhardware: {partitions: {"/": {size: 3, type: ext3}}}\n')
    child = write(tmp_path, "child.appl", "name: child\nappliances: [base]\n")
    assert partitions(load(child)) == {"/": (3072, "ext4", "defaults")}


@pytest.mark.parametrize(
    ("os_line", "boot"),
    [
        ("{name: centos, version: '5'}", (102, "ext3", "defaults")),
        ("{name: rhel, version: '5'}", (102, "ext3", "defaults")),
        ("{name: sl, version: '5'}", (102, "ext3", "defaults")),
        ("{name: centos, version: '6'}", None),
        ("{name: fedora, version: '5'}", None),
    ],
)
def test_el5_gets_a_boot_partition(tmp_path: Path, os_line: str, boot: tuple[int, str, str] | None) -> None:
    """appliance-config-helper.rb:164-165: without a /boot, RHEL/CentOS/SL 5 get a 0.1 GB ext3
    /boot (Red Hat bug 466275)."""
    path = write(tmp_path, "el.appl", f"name: el\nos: {os_line}\n")
    assert partitions(load(path)).get("/boot") == boot


def test_el5_keeps_its_own_boot_partition(tmp_path: Path) -> None:
    """appliance-config-helper.rb:165 adds /boot only ``if partitions['/boot'].nil?``."""
    path = write(
        tmp_path,
        "el.appl",
        """
        name: el
        os: {name: centos, version: '5'}
        hardware: {partitions: {"/boot": {size: 0.5, type: ext4}}}
        """,
    )
    assert partitions(load(path))["/boot"] == (512, "ext4", "defaults")


def test_no_root_password_warns_that_boxgrinder_set_one(tmp_path: Path) -> None:
    """appliance-config-helper.rb:180 sets root's password to 'boxgrinder' when no file gives
    one; imagekit keeps root without a password (docs/compat/boxgrinder.md) and says so."""
    from imagekit.recipe.advice import NO_ROOT_PASSWORD, recipe_warnings

    bare = load(write(tmp_path, "bare.appl", f"name: bare\n{OS_DEBIAN}"))
    assert bare.root_password == "" and recipe_warnings(bare) == (NO_ROOT_PASSWORD,)
    given = write(tmp_path, "given.appl", "name: given\nos: {name: debian, version: '12', password: s3}\n")
    users = write(
        tmp_path,
        "users.appl",
        f"name: users\n{OS_DEBIAN}imagekit: {{users: [{{name: ops, password: x}}]}}\n",
    )
    assert load(given).root_password == "s3"
    assert recipe_warnings(load(given)) == recipe_warnings(load(users)) == ()


def test_negative_version_and_release_are_plain_ints(tmp_path: Path) -> None:
    """appliance_schema_0.9.6.yaml:13-16 declares ``version``/``release`` as ``type: int``
    with no range (kwalify accepts -1)."""
    path = write(tmp_path, "v.appl", f"name: v\nversion: -1\nrelease: -20\n{OS_DEBIAN}")
    recipe = load(path)
    assert (recipe.version, recipe.release) == ("-1", "-20")


def test_errors_name_the_appliances_index_as_written(tmp_path: Path) -> None:
    """The index is the position in the file's ``appliances:`` list, as kwalify's paths
    (``/appliances/1``) count it, even when an earlier entry was itself invalid."""
    child = write(tmp_path, "child.appl", "name: child\nappliances: [x/y, nowhere]\n")
    messages = errors_of(child)
    assert any("appliances[0]: expected text matching" in m for m in messages)
    assert any("appliances[1]: expected an appliance file" in m for m in messages)
    assert not any("appliances[0]: expected an appliance file" in m for m in messages)


# --- point 12: TDL base64 --------------------------------------------------------------------

HEAD = (
    "<template>\n  <name>t</name>\n"
    "  <os><name>Debian</name><version>12</version><arch>x86_64</arch>"
    "<install type='url'><url>http://deb.debian.org/debian/</url></install></os>\n"
)
PAYLOAD = bytes(range(256)) * 2


def tdl_with_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "t.tdl"
    path.write_text(f"{HEAD}  <files><file name='/a' type='base64'>{body}</file></files>\n</template>\n")
    return path


def test_one_line_base64_decodes_to_the_bytes(tmp_path: Path) -> None:
    """oz/TDL.py:88 hands the (stripped) body to ``base64.decodebytes``."""
    one_line = base64.b64encode(PAYLOAD).decode()
    [file] = load_recipe(tdl_with_file(tmp_path, one_line)).files
    assert decode_base64(file.content) == PAYLOAD


def test_line_wrapped_base64_is_refused_as_ozs_schema_refuses_it(tmp_path: Path) -> None:
    """oz/tdl.rng (``define name='base64'``: pattern ``[a-zA-Z0-9+/]+={0,2}``, xsd:string, so
    white space is kept) is checked by TDL.__init__ before data_from_type (TDL.py:88) decodes:
    Oz itself fails on ``base64``'s 76-column output. The vendored schema says the same."""
    wrapped = base64.encodebytes(PAYLOAD).decode()
    assert "\n" in wrapped.strip()
    [message] = errors_of(tdl_with_file(tmp_path, wrapped))
    assert "files.file[0]: expected base64 on one line" in message
    assert "base64 -w 0" in message
    doc = etree.fromstring(
        f"{HEAD}<files><file name='/a' type='base64'>{wrapped}</file></files></template>".encode()
    )
    assert not relaxng().validate(doc)


@pytest.mark.parametrize("body", ["QQ", "QQ=", "QUJDRA=", "aGVsbG8"])
def test_bad_base64_padding_is_refused(tmp_path: Path, body: str) -> None:
    """These pass tdl.rng's pattern, then oz/TDL.py:88 ``base64.decodebytes`` raises
    binascii.Error ("Incorrect padding")."""
    [message] = errors_of(tdl_with_file(tmp_path, body))
    assert "files.file[0]: expected base64 content (Incorrect padding)" in message


def test_bad_padding_in_a_command_is_refused(tmp_path: Path) -> None:
    """oz/TDL.py ``_parse_commands`` decodes each command with data_from_type too."""
    path = tmp_path / "t.tdl"
    path.write_text(
        f"{HEAD}  <commands><command name='c' type='base64'>ZWNobw</command></commands>\n</template>\n"
    )
    [message] = errors_of(path)
    assert "commands.command[0]: expected base64 content (Incorrect padding)" in message
