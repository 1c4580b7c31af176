"""The registry's configuration: ``etc/marketplace.conf`` parsed once into :class:`MarketConfig`.

The file is INI (like StratusLab's ``marketplace.cfg``); every key is optional and documented,
with its default, in the shipped ``etc/marketplace.conf``. Relative paths are relative to the
file's directory. A bad value is reported as ``FILE:LINE:COL: section.key: expected X, got Y``.

    cfg = load_config(None, data_dir=Path("/srv/market"))
    cfg.index_backend   # IndexBackend.SQLITE
"""

from __future__ import annotations

import configparser
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from imagekit import locations
from imagekit.errors import InputError
from marketplace.binding import CertIdentity, EmailBinding
from marketplace.certs import LEGACY_SHA1_BEFORE

CONFIG_NAME = "marketplace.conf"
CONFIG_ENV = "IMAGEKIT_MARKET_CONFIG"
_E = TypeVar("_E", bound=enum.StrEnum)


class IndexBackend(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class PendingPolicy(enum.StrEnum):
    """What happens to a validly signed upload from an endorser who is not whitelisted."""

    QUEUE = "queue"
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True)
class MarketConfig:
    data_dir: Path
    source: Path | None = None
    read_only: bool = False
    serve_pending: bool = False  # GET /changes/pending shows the pending queue to replicas
    base_url: str = ""
    max_upload_bytes: int = 1_048_576
    page_size: int = 50
    max_page_size: int = 1000
    index_backend: IndexBackend = IndexBackend.SQLITE
    dsn: str = ""
    pool_size: int = 8
    pending: PendingPolicy = PendingPolicy.QUEUE
    max_pending: int = 1000  # uploads waiting for an administrator, all endorsers together
    max_pending_per_endorser: int = 20  # …of one endorser e-mail
    whitelist: frozenset[str] = field(default_factory=frozenset)
    trust: tuple[Path, ...] = ()
    allow_sha1: bool = True
    legacy_sha1_before: datetime = LEGACY_SHA1_BEFORE  # SHA-1 certificates chain for older entries
    email_bindings: tuple[EmailBinding, ...] = ()

    @property
    def metadata_dir(self) -> Path:
        return self.data_dir / "metadata"


_KEYS: dict[str, set[str]] = {
    "registry": {
        "data_dir",
        "read_only",
        "serve_pending",
        "base_url",
        "max_upload_bytes",
        "page_size",
        "max_page_size",
    },
    "index": {"backend", "dsn", "pool_size"},
    "uploads": {
        "pending",
        "max_pending",
        "max_pending_per_endorser",
        "whitelist",
        "trust",
        "allow_sha1",
        "legacy_sha1_before",
        "email_bindings",
    },
}


def default_config_path() -> Path:
    return locations.etc_dir() / CONFIG_NAME


def load_config(
    path: Path | None = None, *, data_dir: Path | None = None, state: Path | None = None
) -> MarketConfig:
    """Read ``path`` (default ``etc/marketplace.conf``; a missing default file means defaults).

    ``data_dir`` (the ``--data`` flag) overrides the file; without either the data lives in
    ``<state dir>/market``.
    """
    explicit = path is not None
    path = path if path is not None else default_config_path()
    if path.is_file():
        reader = read_ini(path, _KEYS)
    elif explicit:
        raise InputError("configuration file not found", where=str(path))
    else:
        reader = IniReader(_new_parser(), path, "")
    reader.check_known()
    base = path.parent
    file_data = reader.string("registry", "data_dir", "")
    if data_dir is None:
        data_dir = (base / file_data) if file_data else locations.state_dir(state) / "market"
    return MarketConfig(
        data_dir=data_dir,
        source=path if path.is_file() else None,
        read_only=reader.boolean("registry", "read_only", False),
        serve_pending=reader.boolean("registry", "serve_pending", False),
        base_url=reader.string("registry", "base_url", "").rstrip("/"),
        max_upload_bytes=reader.integer("registry", "max_upload_bytes", 1_048_576, minimum=1024),
        page_size=reader.integer("registry", "page_size", 50, minimum=1),
        max_page_size=reader.integer("registry", "max_page_size", 1000, minimum=1),
        index_backend=reader.choice("index", "backend", IndexBackend, IndexBackend.SQLITE),
        dsn=reader.string("index", "dsn", ""),
        pool_size=reader.integer("index", "pool_size", 8, minimum=1),
        pending=reader.choice("uploads", "pending", PendingPolicy, PendingPolicy.QUEUE),
        max_pending=reader.integer("uploads", "max_pending", 1000, minimum=1),
        max_pending_per_endorser=reader.integer("uploads", "max_pending_per_endorser", 20, minimum=1),
        whitelist=frozenset(reader.lines("uploads", "whitelist")),
        trust=tuple(base / p for p in reader.lines("uploads", "trust")),
        allow_sha1=reader.boolean("uploads", "allow_sha1", True),
        legacy_sha1_before=reader.time("uploads", "legacy_sha1_before", LEGACY_SHA1_BEFORE),
        email_bindings=reader.bindings("uploads", "email_bindings"),
    )


def _new_parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)


def read_ini(path: Path, known: dict[str, set[str]]) -> IniReader:
    """Parse the INI file at ``path``; unreadable or malformed files are an :class:`InputError`."""
    parser = _new_parser()
    try:
        text = path.read_text(encoding="utf-8")
        parser.read_string(text, source=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read configuration: {exc}", where=str(path)) from None
    except configparser.Error as exc:
        raise InputError(f"not an INI file: {exc.message.splitlines()[0]}", where=str(path)) from None
    return IniReader(parser, path, text, known)


class IniReader:
    """Typed access to a parsed INI file, with ``FILE:LINE:COL`` locations for errors.
    ``known`` lists each section's keys (default: this file's); anything else is an error."""

    def __init__(
        self,
        parser: configparser.ConfigParser,
        path: Path,
        text: str,
        known: dict[str, set[str]] | None = None,
    ) -> None:
        self.parser = parser
        self.path = path
        self.lines_ = text.splitlines()
        self.known = _KEYS if known is None else known

    def where(self, section: str, key: str | None = None) -> str:
        current = None
        for number, line in enumerate(self.lines_, 1):
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = stripped[1:-1].strip()
                if key is None and current == section:
                    return f"{self.path}:{number}:1"
            elif current == section and key is not None:
                name = stripped.split("=", 1)[0].split(":", 1)[0].strip()
                if name == key and not line[:1].isspace():
                    return f"{self.path}:{number}:1"
        return str(self.path)

    def check_known(self) -> None:
        for section in self.parser.sections():
            if section not in self.known:
                raise InputError(
                    f"{section}: unknown section (expected one of {', '.join(sorted(self.known))})",
                    where=self.where(section),
                )
            for key in self.parser[section]:
                if key not in self.known[section]:
                    raise InputError(f"{section}.{key}: unknown key", where=self.where(section, key))

    def _raw(self, section: str, key: str) -> str | None:
        if not self.parser.has_option(section, key):
            return None
        return self.parser.get(section, key).strip()

    def _bad(self, section: str, key: str, expected: str, got: str) -> InputError:
        return InputError(
            f"{section}.{key}: expected {expected}, got {got!r}", where=self.where(section, key)
        )

    def string(self, section: str, key: str, default: str) -> str:
        raw = self._raw(section, key)
        return default if raw is None else raw

    def lines(self, section: str, key: str) -> list[str]:
        raw = self._raw(section, key)
        return [] if raw is None else [line.strip() for line in raw.splitlines() if line.strip()]

    def bindings(self, section: str, key: str) -> tuple[EmailBinding, ...]:
        """``EMAIL | SUBJECT | ISSUER`` per line (DNs hold commas, never a bar)."""
        found = []
        for line in self.lines(section, key):
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or "@" not in parts[0] or not all(parts):
                raise self._bad(section, key, "EMAIL | SUBJECT DN | ISSUER DN on each line", line)
            found.append(EmailBinding(parts[0], CertIdentity.of(parts[1], parts[2])))
        return tuple(found)

    def boolean(self, section: str, key: str, default: bool) -> bool:
        raw = self._raw(section, key)
        if raw is None or raw == "":
            return default
        lowered = raw.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise self._bad(section, key, "true or false", raw)

    def integer(self, section: str, key: str, default: int, *, minimum: int) -> int:
        raw = self._raw(section, key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise self._bad(section, key, "an integer", raw) from None
        if value < minimum:
            raise self._bad(section, key, f"an integer >= {minimum}", raw)
        return value

    def time(self, section: str, key: str, default: datetime) -> datetime:
        """An ISO 8601 date or time; without a zone it is UTC."""
        raw = self._raw(section, key)
        if raw is None or raw == "":
            return default
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise self._bad(section, key, "an ISO 8601 date or time", raw) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def choice(self, section: str, key: str, kind: type[_E], default: _E) -> _E:
        raw = self._raw(section, key)
        if raw is None or raw == "":
            return default
        try:
            return kind(raw.lower())
        except ValueError:
            raise self._bad(section, key, " or ".join(m.value for m in kind), raw) from None
