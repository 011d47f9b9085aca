"""Settings, read in one place.

Precedence, highest first: environment variables (``CLM_DATABASE_URL``, ``CLM_<FIELD>``), the
project config file (``clm.toml`` in the project directory, or the file named by ``CLM_CONFIG``),
then the defaults below. The project directory is ``CLM_PROJECT_DIR``, else the nearest directory
from the working directory upwards that holds ``clm.toml`` (as git finds its repository), else
the working directory; it holds ``journeys/`` and ``templates/``.

Secrets are never read from the config file: it names the environment variables (or Prefect
Secret blocks) that hold them, so the file can be committed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clm_core.errors import ConfigError

CONFIG_FILE = "clm.toml"


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Sections other than ``[clm]`` stay as plain dicts for their area."""

    project_dir: Path
    database_url: str
    default_timezone: str = "UTC"
    default_region: str = "US"  # phone numbers without a country code
    default_locale: str = "en"
    currency: str = "USD"
    # Name of the environment variable holding the HMAC key for unsubscribe tokens and links.
    secret_key_env: str = "CLM_SECRET_KEY"
    public_base_url: str = "https://clm.example.com"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def journeys_dir(self) -> Path:
        return self.project_dir / "journeys"

    @property
    def templates_dir(self) -> Path:
        return self.project_dir / "templates"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def section(self, name: str) -> dict[str, Any]:
        """A config-file section such as ``[delivery]`` or ``[lifecycle]`` ({} if absent)."""
        return self.sections.get(name, {})

    def with_database(self, url: str) -> Settings:
        return replace(self, database_url=normalize_database_url(url))


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (or none)."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def find_project(start: Path) -> Path | None:
    """The nearest directory from ``start`` upwards that holds ``clm.toml``, or None."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file():
            return directory
    return None


_SIMPLE = {f.name for f in fields(Settings)} - {"project_dir", "database_url", "sections"}


def load_settings(
    project_dir: str | Path | None = None, env: dict[str, str] | None = None
) -> Settings:
    """Resolve settings from defaults, the config file and the environment."""
    env = dict(os.environ if env is None else env)
    root = Path(project_dir or env.get("CLM_PROJECT_DIR") or find_project(Path.cwd())
                or Path.cwd()).resolve()
    config_path = Path(env["CLM_CONFIG"]) if env.get("CLM_CONFIG") else root / CONFIG_FILE
    data: dict[str, Any] = {}
    if config_path.is_file():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: {exc}") from exc
    elif env.get("CLM_CONFIG"):
        raise ConfigError(f"CLM_CONFIG names {config_path}, which does not exist")

    # A key above the first [section] belongs to no section: TOML reads it as top-level, and
    # it would be silently ignored (a database_url there meant another database than the
    # operator thought).
    loose = sorted(k for k, v in data.items() if not isinstance(v, dict))
    if loose:
        core_keys = _SIMPLE | {"database_url"}
        hint = ("; move it under [clm]" if set(loose) <= core_keys
                else "; every key belongs to a section such as [clm] or [delivery]")
        raise ConfigError(f"{config_path}: {', '.join(loose)} "
                          f"{'is' if len(loose) == 1 else 'are'} outside any section{hint}")
    core = dict(data.pop("clm", {}))
    unknown = set(core) - _SIMPLE - {"database_url"}
    if unknown:
        raise ConfigError(f"{config_path}: unknown keys in [clm]: {', '.join(sorted(unknown))}; "
                          f"valid: database_url, {', '.join(sorted(_SIMPLE))}")
    for name in _SIMPLE | {"database_url"}:
        value = env.get(f"CLM_{name.upper()}")
        if value:
            core[name] = value
    url = core.pop("database_url", None) or f"sqlite:///{root / 'clm.db'}"
    settings = Settings(project_dir=root, database_url=normalize_database_url(url),
                        sections=data, **core)
    try:
        ZoneInfo(settings.default_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        where = (
            "CLM_DEFAULT_TIMEZONE" if env.get("CLM_DEFAULT_TIMEZONE") else f"{config_path}: [clm]"
        )
        raise ConfigError(f"{where} default_timezone {settings.default_timezone!r} is not an IANA "
                          "time zone (e.g. Asia/Shanghai, America/New_York, UTC)") from exc
    return settings


_SECRET_VALUES: set[str] = set()


def redact(text: str) -> str:
    """``text`` with every secret read through ``secret()`` replaced by ``***``.

    Defence in depth for messages that quote provider responses or request details.
    """
    for value in _SECRET_VALUES:
        if value and value in text:
            text = text.replace(value, "***")
    return text


# Where secrets come from besides the environment. The orchestration layer adds the Prefect
# Secret block look-up here (``flows.runtime``), so the domain never imports Prefect itself.
SecretSource = Callable[[str], "str | None"]
_SECRET_SOURCES: list[tuple[Callable[[str], str], SecretSource]] = []


def add_secret_source(describe: Callable[[str], str], source: SecretSource) -> None:
    """Register a fallback look-up, ``source(NAME) -> value or None``; ``describe(NAME)`` says
    how to provide a secret that way (it is shown in the error when none is set)."""
    if all(src is not source for _, src in _SECRET_SOURCES):
        _SECRET_SOURCES.append((describe, source))


def secret(name: str, env: dict[str, str] | None = None, file: Path | None = None) -> str:
    """A secret from the environment, or from a registered source (a Prefect Secret block),
    or else from ``file`` (a project's generated key, readable by its owner only).

    The error names the variable, never a value; the value is remembered for ``redact``.
    """
    source_env: Mapping[str, str] = os.environ if env is None else env
    value = source_env.get(name)
    if not value:
        for _, source in _SECRET_SOURCES:
            try:
                value = source(name)
            except Exception:  # a source that cannot answer is a source without the secret
                value = None
            if value:
                break
    if not value and file is not None and file.is_file():
        value = file.read_text(encoding="utf-8").strip()
    if not value:
        hints = "".join(f" or {describe(name)}" for describe, _ in _SECRET_SOURCES)
        if file is not None:
            hints += f" or keep it in {file} (mode 0600)"
        raise ConfigError(f"secret {name} is not set: export {name}{hints}")
    if len(value) >= 6:  # short values would redact ordinary words
        _SECRET_VALUES.add(value)
    return value
