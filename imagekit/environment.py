"""Every environment variable imagekit reads, parsed once into one frozen ``Environment``.

``imagekit/cli.py`` parses the process environment when a command starts (a server is a
command) and installs it for the command's duration; modules ask ``current()`` rather than
``os.environ``, so what a command saw is one value, listed here with its meaning and default
(the admin docs' table is ``VARIABLES``). Outside a command (a library caller, a test) nothing
is installed and ``current()`` parses the environment as it is at the call. The one other reader
is ``imagekit/run.py``, which passes a few variables through to child processes; and
``imagekit/inspect.py`` sets (never reads) the libguestfs variables the library reads in-process.
``tests/test_foundation.py`` fails when another module reads ``os.environ``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType


def _variable(name: str, meaning: str, default: str) -> str | None:
    """A field holding variable ``name``'s value (``None`` when unset or empty)."""
    return field(default=None, metadata={"name": name, "meaning": meaning, "default": default})


@dataclass(frozen=True)
class Environment:
    """The variables' values as a command found them (each ``None`` when unset or empty)."""

    state: str | None = _variable(
        "IMAGEKIT_STATE", "the state directory (--state wins)", "$XDG_DATA_HOME/imagekit"
    )
    data_home: str | None = _variable("XDG_DATA_HOME", "the state directory's parent", "~/.local/share")
    etc: str | None = _variable("IMAGEKIT_ETC", "the configuration directory", "/etc/imagekit, else etc/")
    tmpdir: str | None = _variable("TMPDIR", "where builds work (--workdir wins)", "/dev/shm or /tmp")
    kept_stages: str | None = _variable(
        "IMAGEKIT_KEPT_STAGES",
        "package stages builds keep beside their work directory for the next build (0: none)",
        "1",
    )
    snapshot: str | None = _variable(
        "IMAGEKIT_SNAPSHOT", "pins the Debian archive state of a build", "the InRelease files' hash"
    )
    source_date_epoch: str | None = _variable(
        "SOURCE_DATE_EPOCH", "a build's time (--source-date-epoch wins)", "the archive's newest Date"
    )
    accel: str | None = _variable("IMAGEKIT_ACCEL", "kvm or tcg: skips the KVM probe", "probed")
    market: str | None = _variable(
        "IMAGEKIT_MARKET",
        "the registry's URL for market commands (--endpoint wins)",
        "http://127.0.0.1:8081",
    )
    build_endpoint: str | None = _variable(
        "IMAGEKIT_BUILD_ENDPOINT", "the build service's URL (--endpoint wins)", "http://127.0.0.1:4570"
    )
    build_user: str | None = _variable("IMAGEKIT_BUILD_USER", "the build service's user (--user wins)", "")
    build_token: str | None = _variable("IMAGEKIT_BUILD_TOKEN", "a build service API token", "")
    build_password: str | None = _variable("IMAGEKIT_BUILD_PASSWORD", "the build user's password", "")
    occi_url: str | None = _variable("OCCI_URL", "the OCCI server (--url wins)", "")
    occi_user: str | None = _variable("OCCI_USER", "the OCCI user (--username wins)", "")
    occi_password: str | None = _variable("OCCI_PASSWORD", "the OCCI password (--password wins)", "")
    ec2_url: str | None = _variable(
        "EC2_URL", "the EC2 Query endpoint (--url wins)", "http://localhost:4567"
    )
    ec2_access_key: str | None = _variable("EC2_ACCESS_KEY", "the EC2 access key (--access-key wins)", "")
    ec2_secret_key: str | None = _variable("EC2_SECRET_KEY", "the EC2 secret key (--secret-key wins)", "")
    one_auth: str | None = _variable(
        "ONE_AUTH", "an OpenNebula session file (user:password)", "~/.one/one_auth"
    )
    # Every variable, for a ``.appl`` recipe's ``#VAR#`` (any name: the recipe chooses).
    recipe_variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, environ: Mapping[str, str]) -> Environment:
        values = {f.name: environ.get(f.metadata["name"]) or None for f in fields(cls) if f.metadata}
        return cls(**values, recipe_variables=MappingProxyType(dict(environ)))

    def named(self) -> dict[str, str]:
        """The variables that are set, by their names (``EC2_URL`` …)."""
        return {
            f.metadata["name"]: value
            for f in fields(self)
            if f.metadata and (value := getattr(self, f.name)) is not None
        }


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str


VARIABLES: tuple[Variable, ...] = tuple(
    Variable(f.metadata["name"], f.metadata["meaning"], f.metadata["default"])
    for f in fields(Environment)
    if f.metadata
)

_installed: list[Environment] = []


def current() -> Environment:
    """The command's environment; outside a command, the process's as it is now."""
    if _installed:
        return _installed[-1]
    return Environment.parse(os.environ)


@contextlib.contextmanager
def installed(environment: Environment) -> Iterator[Environment]:
    """``environment`` is ``current()`` until the block ends (a command's whole run)."""
    _installed.append(environment)
    try:
        yield environment
    finally:
        _installed.pop()
