"""``clm init`` and ``clm deployments``: starting a store's project, and its schedules.

A project is a directory with ``clm.toml``, ``journeys/`` (stage rules and journeys),
``templates/``, a README for the marketer and ``prefect.yaml``. ``clm init`` copies the sample
journeys and templates that ship with CLM; in a checkout they are the repository's top-level
``journeys/`` and ``templates/``, and an installed package carries a copy made at build time
(``setup.py``), so the repository holds one source of each.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from clm.context import App, pass_app
from clm_core.errors import ConfigError
from clm_core.settings import CONFIG_FILE, Settings

PACKAGE = Path(__file__).resolve().parent
SKELETON = PACKAGE / "skeleton"
SHIPPED = ("journeys", "templates")

# The deployments' schedules, overridable in [orchestration] of clm.toml.
CRONS = {"lifecycle_cron": "30 2 * * *", "dispatch_cron": "*/5 * * * *", "fit_cron": "0 1 * * 0",
         "report_cron": "0 6 * * 1"}
ORCHESTRATION_KEYS = {*CRONS, "timezone", "task_runner", "dask_address", "dask_workers",
                      "max_workers"}
# Flows as importable modules: they run from the installed package in any project directory.
ENTRYPOINTS = {"lifecycle_entrypoint": "flows.lifecycle:lifecycle",
               "dispatch_entrypoint": "flows.dispatch:dispatch",
               "fit_entrypoint": "flows.fit_models:fit_models",
               "report_entrypoint": "flows.report:report"}


def shipped(name: str) -> Path:
    """The sample ``journeys`` or ``templates`` directory that comes with CLM."""
    for candidate in (SKELETON / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"the sample {name}/ are missing from this installation of clm "
                      f"(looked in {SKELETON} and {PACKAGE.parent}); reinstall the package")


def schedule_values(settings: Settings) -> dict[str, str]:
    """Time zone and crons of the deployments, from clm.toml."""
    section = settings.section("orchestration")
    unknown = set(section) - ORCHESTRATION_KEYS
    if unknown:
        raise ConfigError(
            f"{settings.project_dir / CONFIG_FILE}: unknown keys in [orchestration]: "
            f"{', '.join(sorted(unknown))}; valid: {', '.join(sorted(ORCHESTRATION_KEYS))}"
        )
    timezone = str(section.get("timezone") or settings.default_timezone)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{settings.project_dir / CONFIG_FILE}: [orchestration] timezone "
                          f"{timezone!r} is not an IANA time zone") from exc
    values = {key: str(section.get(key, default)) for key, default in CRONS.items()}
    for key, cron in values.items():
        if len(cron.split()) != 5:
            raise ConfigError(f"{settings.project_dir / CONFIG_FILE}: [orchestration] {key} "
                              f"{cron!r} is not a five-field cron expression")
    return {"timezone": timezone, **values, **ENTRYPOINTS}


def render_prefect_yaml(settings: Settings) -> str:
    """The project's prefect.yaml: the three deployments on the store's schedules."""
    template = Template((SKELETON / "prefect.yaml").read_text(encoding="utf-8"))
    return template.substitute(schedule_values(settings))


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai, "
                                 "America/New_York, UTC)", param_hint="--timezone") from None
    return value


def create_project(directory: Path, timezone: str, region: str, locale: str,
                   currency: str) -> list[Path]:
    """Write a new project into ``directory``; returns what was written. Refuses to touch a
    directory that already has a clm.toml, journeys/ or templates/."""
    taken = [directory / n for n in (CONFIG_FILE, *SHIPPED) if (directory / n).exists()]
    if taken:
        raise ConfigError(f"{taken[0]} already exists: {directory} is already a project "
                          "(or holds one's files); choose another directory")
    sources = {name: shipped(name) for name in SHIPPED}  # fail before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    values = {"name": directory.resolve().name, "timezone": timezone, "region": region.upper(),
              "locale": locale, "currency": currency.upper()}
    written = []
    for name, source in sources.items():
        shutil.copytree(source, directory / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        written.append(directory / name)
    for src, dst in (("clm.toml", CONFIG_FILE), ("README.md", "README.md"),
                     ("gitignore", ".gitignore")):
        path = directory / dst
        if path.exists():  # an existing README or .gitignore is the owner's: keep it
            continue
        text = (SKELETON / src).read_text(encoding="utf-8")
        path.write_text(Template(text).substitute(values) if src != "gitignore" else text,
                        encoding="utf-8")
        written.append(path)
    from clm_core.settings import load_settings

    settings = load_settings(directory, env={})
    (directory / "prefect.yaml").write_text(render_prefect_yaml(settings), encoding="utf-8")
    written.append(directory / "prefect.yaml")
    return written


def register(cli: click.Group) -> None:
    @cli.command("init")
    @click.argument("directory", default=".", type=click.Path(file_okay=False))
    @click.option("--timezone", default="UTC", show_default=True, callback=lambda c, p, v:
                  _check_timezone(v), help="The store's time zone (IANA name).")
    @click.option("--region", default="US", show_default=True,
                  help="Country of phone numbers written without +code (ISO 3166, e.g. CN).")
    @click.option("--locale", default="en", show_default=True,
                  help="Language of customers without one (en, zh-CN, ...).")
    @click.option("--currency", default="USD", show_default=True)
    def init(directory: str, timezone: str, region: str, locale: str, currency: str) -> None:
        """Create a store's project in DIRECTORY (default: here): a commented clm.toml, the
        stage rules and sample journeys, message templates, a README and prefect.yaml."""
        root = Path(directory)
        written = create_project(root, timezone, region, locale, currency)
        click.echo(f"created a CLM project in {root.resolve()}:")
        for path in written:
            click.echo(f"  {path.relative_to(root)}{'/' if path.is_dir() else ''}")
        where = "" if root.resolve() == Path.cwd().resolve() else f"cd {directory} && "
        click.echo(f"next: {where}clm demo   (a whole run on the CDNOW sample store), "
                   "or clm import customers FILE.csv; see README.md")

    @cli.command("deployments")
    @click.option("--check", is_flag=True,
                  help="Only check that prefect.yaml is up to date (exit 1 if not).")
    @pass_app
    def deployments(app: App, check: bool) -> None:
        """Write prefect.yaml from clm.toml: the daily evaluation, dispatch and weekly fit,
        scheduled in the store's time zone."""
        path = app.settings.project_dir / "prefect.yaml"
        text = render_prefect_yaml(app.settings)
        values = schedule_values(app.settings)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if check:
            if current != text:
                raise ConfigError(f"{path} is not what clm.toml says (time zone "
                                  f"{values['timezone']}): run `clm deployments` to rewrite it")
            click.echo(f"{path} is up to date (schedules in {values['timezone']})")
            return
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}: lifecycle {values['lifecycle_cron']}, dispatch "
                   f"{values['dispatch_cron']}, fit {values['fit_cron']} ({values['timezone']})")
