"""Fuzzing both loaders: whatever the bytes, the result is a Recipe or an InputError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagekit.errors import InputError
from imagekit.recipe import load_recipe

from .conftest import APPL_ANCHORS, OWN, SHIPPED, TDL_ANCHORS

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Seeds: the project's own recipes, plus the original systems' files when shared/ is beside us.
_SEEDS = [*SHIPPED, *OWN, *APPL_ANCHORS, *TDL_ANCHORS]
APPL_TEXTS = [p.read_text() for p in _SEEDS if p.suffix == ".appl" and not p.name.startswith("_")]
TDL_TEXTS = [p.read_text() for p in _SEEDS if p.suffix == ".tdl"]


def _mutate(text: str, cut: int, insert: str) -> str:
    at = cut % (len(text) + 1)
    return text[:at] + insert + text[at + len(insert) :]


def _load(path: Path) -> None:
    try:
        load_recipe(path, env={})
    except InputError as err:
        assert str(err)


yaml_bits = st.sampled_from(
    [
        ":",
        "- ",
        "@",
        "#",
        "\t",
        "{",
        "}",
        "[",
        "]",
        "'",
        '"',
        "\n",
        "  ",
        "&a",
        "*a",
        "!!python/object:x",
        "0x1F",
        "1:30",
        ".nan",
        "~",
        "yes",
        "- @base",
        "appliances: [x]",
        "hardware: {memory: 65}",
        "\x00",
        "é",
        "#OS_NAME#",
    ]
)
xml_bits = st.sampled_from(
    [
        "<",
        ">",
        "</",
        "/>",
        "&amp;",
        "&x;",
        "<!DOCTYPE t [<!ENTITY x 'y'>]>",
        "<ik:firmware>uefi</ik:firmware>",
        "<command name='c' position='2'>x</command>",
        "<disk><size>1X</size></disk>",
        "\x00",
        "]]>",
        "<os>",
        "é",
    ]
)


@SETTINGS
@given(
    base=st.sampled_from(APPL_TEXTS),
    cut=st.integers(0, 5000),
    insert=st.one_of(yaml_bits, st.text(max_size=8)),
)
def test_appl_loader_never_crashes(tmp_path: Path, base: str, cut: int, insert: str) -> None:
    path = tmp_path / "fuzz.appl"
    path.write_text(_mutate(base, cut, insert), encoding="utf-8", errors="surrogatepass")
    _load(path)


@SETTINGS
@given(text=st.text(max_size=300))
def test_appl_loader_on_arbitrary_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.appl"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _load(path)


@SETTINGS
@given(
    base=st.sampled_from(TDL_TEXTS),
    cut=st.integers(0, 5000),
    insert=st.one_of(xml_bits, st.text(max_size=8)),
)
def test_tdl_loader_never_crashes(tmp_path: Path, base: str, cut: int, insert: str) -> None:
    path = tmp_path / "fuzz.tdl"
    path.write_bytes(_mutate(base, cut, insert).encode("utf-8", "surrogatepass"))
    _load(path)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_tdl_loader_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.tdl"
    path.write_bytes(data)
    _load(path)


KEYS = st.sampled_from(
    [
        "name",
        "os",
        "version",
        "password",
        "pae",
        "hardware",
        "cpus",
        "memory",
        "partitions",
        "/",
        "size",
        "type",
        "options",
        "packages",
        "includes",
        "repos",
        "baseurl",
        "mirrorlist",
        "ephemeral",
        "files",
        "/opt",
        "post",
        "base",
        "variables",
        "X",
        "appliances",
        "imagekit",
        "firmware",
        "formats",
        "users",
        "ssh_keys",
        "path",
        "raw",
        "local",
        "pre",
        "default_repos",
        "summary",
        "release",
    ]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from(["#X#", "uefi", "http://a/", "/etc/x", "@base", "ext4", "qcow2", "debian"]),
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)


@SETTINGS
@given(doc=st.dictionaries(KEYS, DOCS, max_size=8))
def test_appl_loader_on_schema_shaped_documents(tmp_path: Path, doc: dict[str, object]) -> None:
    import yaml

    path = tmp_path / "fuzz.appl"
    path.write_text(yaml.safe_dump(doc))
    _load(path)


def test_a_url_with_an_unbalanced_bracket_is_an_input_error(tmp_path: Path) -> None:
    """urllib.parse raises ValueError ("Invalid IPv6 URL") on ``http://[host/``: found by the fuzz
    test above; a TDL repository URL is then a located input error, an .appl file URL a file."""
    tdl = tmp_path / "bracket.tdl"
    tdl.write_text(
        "<template><name>b</name><os><name>Debian</name><version>12</version><arch>x86_64</arch>"
        "<install type='url'><url>http://deb.debian.org/debian/</url></install></os>"
        "<repositories><repository name='r'><url>http://[repo.example.org/x/</url></repository>"
        "</repositories></template>"
    )
    with pytest.raises(InputError, match=r"repositories\.repository\[0\]\.url: expected a URL"):
        load_recipe(tdl, env={})
    appl = tmp_path / "bracket.appl"
    appl.write_text(
        "name: b\nos:\n  name: debian\n  version: '12'\nfiles:\n  /opt:\n    - 'http://[x.example.org/a/b.txt?q#f'\n"
    )
    [file] = load_recipe(appl, env={}).files
    assert file.path == "/opt/b.txt"
