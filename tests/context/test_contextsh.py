"""context.sh: exact format, refused keys, and byte-exact round trips through bash and cloud-init."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cloudinit.sources import DataSourceOpenNebula as ds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context.contextsh import HEADER, parse_context_sh, render_context_sh
from imagekit.errors import DataError, InputError

# Values that broke real writers (cloud-init's TEST_VARS, the vCenter gsub bug, 1.4's "…").
TRICKY = {
    "QUOTE": "it's ok",
    "QUOTES": "'''\"\"\"'",
    "BACKSLASH": "\\",
    "BACKSLASHES": "a\\b\\\\c\\'d\\n",
    "DOLLAR": "$",
    "SUBST": "$(echo pwned) ${HOME} $HOME",
    "BACKTICK": "`id` ``",
    "MULTILINE": "line 1\nline 2\n\nline 4",
    "TRAILING": "value\n\n",
    "LEADING": "\n\n  indented",
    "UTF8": "héllo wörld ✓ 日本 🚀",
    "TABS": "a\tb\\tc",
    "EMPTY": "",
    "SEMICOLON": '";',
    "EQUALS": "a=b=c",
    "CR": "dos\r\nline\r",
    "HASH": "# not a comment",
}


# The shells that source context.sh: one-context and cloud-init 22.x use bash; cloud-init's
# OpenNebula datasource is also run with `sh -e` (dash on Debian/Ubuntu), which must read the
# same values. Both get the script on stdin with -e, as cloud-init's parse_shell_config does.
SHELLS = [
    pytest.param("bash", id="bash"),
    pytest.param(
        "dash",
        id="dash",
        marks=pytest.mark.skipif(shutil.which("dash") is None, reason="dash not installed"),
    ),
]


def _shell_values(shell: str, path: Path, keys: list[str]) -> dict[str, str]:
    """Source ``path`` with ``shell -e`` and print each key's value NUL-terminated."""
    script = ". ./context.sh\n" + "".join(f'printf "%s\\0" "${key}"\n' for key in keys)
    out = subprocess.run(
        [shell, "-e"], input=script.encode(), cwd=path.parent, capture_output=True, check=True
    )
    values = out.stdout.split(b"\0")[:-1]
    return {k: v.decode() for k, v in zip(keys, values, strict=True)}


def test_exact_format() -> None:
    text = render_context_sh({"TOKEN": "yes", "DISK_ID": "1", "B": "it's", "ETH0_MTU": "", "A": "x\ny"})
    assert text == (f"{HEADER}\nA='x\ny'\nB='it'\\''s'\nDISK_ID='1'\nETH0_MTU=''\nTOKEN='yes'\n")


def test_keys_sorted_bytewise() -> None:
    text = render_context_sh({"a": "1", "B": "2", "_C": "3", "A1": "4", "A_": "5", "AB": "6"})
    keys = [line.split("=")[0] for line in text.splitlines()[1:]]
    assert keys == ["A1", "AB", "A_", "B", "_C", "a"]


def test_onegate_anchor_order(anchors: Path) -> None:
    """The docs list TARGET after VMID; oned's std::map writes it sorted."""
    doc = (anchors / "context" / "docs_onegate_context.sh").read_text()
    values = parse_context_sh(doc)
    assert values == {
        "DISK_ID": "1",
        "ONEGATE_ENDPOINT": "http://192.168.0.1:5030",
        "VMID": "0",
        "TARGET": "hdb",
        "TOKEN": "yes",
    }
    rendered = render_context_sh(values)
    assert rendered.splitlines()[0] == doc.splitlines()[0]
    assert sorted(rendered.splitlines()[1:]) == sorted(doc.splitlines()[1:])
    assert [line.split("=")[0] for line in rendered.splitlines()[1:]] == [
        "DISK_ID",
        "ONEGATE_ENDPOINT",
        "TARGET",
        "TOKEN",
        "VMID",
    ]


def test_reads_14_double_quoted_anchor(anchors: Path) -> None:
    values = parse_context_sh((anchors / "context" / "docs-4.14_cong_generated_context.sh").read_text())
    assert values["hostname"] == "MAINHOST"
    assert values["target"] == "sdb"
    assert values["files_ds"].startswith("/home/cloud/var/datastores/2/3fae")
    assert len(values) == 7


@pytest.mark.parametrize(
    "key",
    [
        "PATH",
        "IFS",
        "HOME",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "BASH_ENV",
        "BASHOPTS",
        "SHELLOPTS",
        "PS1",
        "UID",
    ],
)
def test_reserved_names_refused(key: str) -> None:
    with pytest.raises(InputError, match=rf"CONTEXT\.{key}: reserved name"):
        render_context_sh({"OK": "1", key: "x"})


@pytest.mark.parametrize("key", ["1A", "MY-VAR", "A B", "", "É", "A.B", "X$"])
def test_invalid_names_refused(key: str) -> None:
    with pytest.raises(InputError, match="expected a shell variable name"):
        render_context_sh({key: "x"})


def test_hostname_is_allowed() -> None:
    """HOSTNAME is how templates set the guest's name (cloud-init's local-hostname source)."""
    assert "HOSTNAME='vm'" in render_context_sh({"HOSTNAME": "vm"})


def test_nul_refused() -> None:
    with pytest.raises(InputError, match="NUL"):
        render_context_sh({"A": "x\0y"})


@pytest.mark.parametrize("shell", SHELLS)
def test_tricky_values_through_the_shells(tmp_path: Path, shell: str) -> None:
    path = tmp_path / "context.sh"
    path.write_text(render_context_sh(TRICKY), encoding="utf-8")
    assert _shell_values(shell, path, list(TRICKY)) == TRICKY
    assert not (tmp_path / "pwned").exists()


def test_tricky_values_through_cloud_init() -> None:
    parsed = ds.parse_shell_config(render_context_sh(TRICKY), asuser=None)
    # cloud-init reports variables that changed; unset → '' counts, so EMPTY comes back too.
    assert parsed == TRICKY


def test_tricky_values_through_own_reader() -> None:
    assert parse_context_sh(render_context_sh(TRICKY)) == TRICKY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('A="x \\"y\\" \\\\ \\$ \\`"\n', {"A": 'x "y" \\ $ `'}),
        ("export A='1'; B=plain # comment\n\n# c\nC=\n", {"A": "1", "B": "plain", "C": ""}),
        ("A='a'\\''b'\"c\"d", {"A": "a'bcd"}),
    ],
)
def test_reader_forms(text: str, expected: dict[str, str]) -> None:
    assert parse_context_sh(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('A="vm-$NAME"\n', r"ctx:1:7: '\$' inside double quotes"),
        ("A=$(id)\n", r"ctx:1:3: '\$' needs shell expansion"),
        ("A='open\n", "ctx:1:3: unterminated single quote"),
        ("rm -rf /\n", "ctx:1:1: expected KEY=value"),
        ("A=1 B=2\n", "ctx:1:5: expected the end of the line"),
    ],
)
def test_reader_refuses(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_context_sh(text, "ctx")


_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)
_keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: (
        not k.startswith(("BASH", "LD_"))
        and k
        not in {"PATH", "IFS", "HOME", "ENV", "CDPATH", "PS1", "PS2", "PS3", "PS4", "SHELL", "UID", "EUID"}
        and k not in {"PPID", "GROUPS", "PWD", "OLDPWD", "OPTIND", "OPTARG", "OPTERR", "RANDOM", "SRANDOM"}
        and k not in {"SECONDS", "LINENO", "HISTCMD", "FUNCNAME", "DIRSTACK", "TMOUT", "GLOBIGNORE"}
        and k not in {"EPOCHSECONDS", "EPOCHREALTIME", "SHELLOPTS", "PROMPT_COMMAND", "POSIXLY_CORRECT"}
    )
)


@pytest.mark.parametrize("shell", SHELLS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(_keys, _values, max_size=6))
def test_property_shell_round_trip(tmp_path: Path, shell: str, values: dict[str, str]) -> None:
    """Whatever the values, ``bash -e`` and ``dash -e`` (``sh`` on Debian, what cloud-init's
    OpenNebula datasource may source context.sh with) read them back byte for byte."""
    path = tmp_path / "context.sh"
    path.write_text(render_context_sh(values), encoding="utf-8")
    assert _shell_values(shell, path, list(values)) == values
    assert parse_context_sh(path.read_bytes().decode()) == values


@settings(max_examples=60, deadline=None)
@given(value=_values)
def test_property_cloud_init_round_trip(value: str) -> None:
    # A key no bash environment has, so cloud-init's "changed" diff always reports it.
    parsed = ds.parse_shell_config(render_context_sh({"IMAGEKIT_TEST_VALUE": value}), asuser=None)
    assert parsed == {"IMAGEKIT_TEST_VALUE": value}
