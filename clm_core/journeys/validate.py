"""``clm validate``: journeys, stage rules and the templates journeys use, every problem located.

Journeys: the loader's checks, and every stage a journey names must be one the project's stage
rules define (``lifecycle.yaml`` beside the journeys; the built-in stages without it).

Templates: every template a journey sends is rendered in the sandbox (undefined variables are
errors) for a sample customer in each locale that matters: the template's own variants, the
default locale, and every locale the store's customers have when the database can be read. The
sample carries the configured store and links (``[delivery] store_url``, ``public_base_url``)
and a coupon exactly when the step gives one. Then, as errors:

1. fake placeholders and text outside blocks, in every file the variant renders from
   (``template_checks``), at that file's line and column;
2. every ``href``/``src`` of the rendered HTML is an absolute http(s) or mailto: URL, reported
   where the attribute is written;
3. a marketing email links to ``links.unsubscribe`` in its HTML and shows it in its text; a
   marketing SMS has an opt-out line. Journeys tagged ``transactional`` are exempt.

A locale whose customers would get another locale's variant is a warning with their count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clm_core.errors import Problem, SpecError, TemplateRenderError
from clm_core.journeys import template_checks as tc
from clm_core.journeys.fields import STAGES
from clm_core.journeys.loader import CompiledJourney, load_journey, stage_refs
from clm_core.journeys.model import ProjectPolicy, SendStep
from clm_core.journeys.store import NOT_JOURNEYS, duplicate_name, journey_files
from clm_core.loyalty.spec import LOYALTY_FILE, load_programme
from clm_core.settings import CONFIG_FILE, Settings
from clm_core.suggest import did_you_mean
from clm_core.templating import (
    PARTS,
    RenderedEmail,
    TemplateStore,
    configured_store,
    sample_context,
)
from clm_core.yamlspec import Locator, parse_yaml

RULES_FILE = "lifecycle.yaml"
# words of an SMS opt-out line ("Reply STOP to opt out", "拒收请回复R", "回复TD退订")
OPT_OUT = ("stop", "opt out", "opt-out", "unsubscribe", "退订", "拒收")


def _stage_rules(path: Path) -> tuple[list[Problem], list[str] | None]:
    """Problems of a stage rules file, and its stage names when it is valid."""
    from clm_core.lifecycle.stages import load_rules

    try:
        return [], load_rules(path).names
    except SpecError as exc:
        return exc.problems, None


def _programme_tiers(files: list[Path]) -> list[str] | None:
    """Tier names of the programme beside the checked journeys (None without a valid one)."""
    for directory in {f.parent for f in files}:
        try:
            prog = load_programme(directory)
        except SpecError:
            return []  # reported on its own; no tier can be checked against it
        if prog is not None:
            return prog.tier_names()
    return None


def _loyalty(path: Path) -> list[Problem]:
    try:
        load_programme(path.parent)
    except SpecError as exc:
        return exc.problems
    return []


def tier_problems(j: CompiledJourney, tiers: list[str] | None) -> list[Problem]:
    """A tier trigger must name a tier of the loyalty programme (and there must be one)."""
    entry = j.spec.entry.tier
    if entry is None:
        return []
    _, loc = parse_yaml(j.source, j.file)
    if tiers is None:
        return [loc.problem(("entry", "tier"), f"entry on a tier, but there is no loyalty "
                            f"programme ({LOYALTY_FILE} next to the journeys)")]
    refs: list[tuple[str, tuple[str | int, ...]]] = (
        [(entry.to, ("entry", "tier", "to"))] if entry.to else [])
    refs += [(name, ("entry", "tier", "from", i)) for i, name in enumerate(entry.from_ or [])
             if name != "none"]  # "none": not a member before
    return [loc.problem(path, f"unknown tier {name!r}{did_you_mean(name, tiers)}; the "
                        f"programme's tiers: {', '.join(tiers)} (and 'none' in from)")
            for name, path in refs if name not in tiers]


def customer_locales(settings: Settings) -> dict[str, int] | None:
    """Customers per locale (no locale counts as the default), or None when there is no database
    to read. Never creates or migrates one: validating a checkout must leave no file behind."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from clm_core.db import tables as t
    from clm_core.db.engine import make_engine

    url = make_url(settings.database_url)
    if url.drivername.startswith("sqlite"):
        if not url.database or url.database == ":memory:" or not Path(url.database).is_file():
            return None
        engine = make_engine(settings.database_url)
    else:
        engine = make_engine(settings.database_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(t.customers.c.locale, sa.func.count())
                                .group_by(t.customers.c.locale)).all()
    except sa.exc.SQLAlchemyError:  # unreachable, or not a CLM database yet
        return None
    finally:
        engine.dispose()
    counts: dict[str, int] = {}
    for locale, n in rows:
        key = locale or settings.default_locale
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def _config_line(settings: Settings, key: str) -> tuple[str, int | None]:
    """Where ``key`` is set in clm.toml (the file and line), for problems with its value."""
    path = settings.project_dir / CONFIG_FILE
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.split("=")[0].strip() == key:
                return str(path), n
    return f"{path} ({key}, default or CLM_{key.upper()})", None


def config_problems(settings: Settings) -> list[Problem]:
    """The URLs messages link to must be absolute: a mail client has nothing to resolve against."""
    problems = []
    for key, url in (("public_base_url", settings.public_base_url),
                     ("store_url", configured_store(settings)["url"])):
        if not tc.is_absolute(url) or url.startswith("mailto:"):
            file, line = _config_line(settings, key)
            problems.append(Problem(file, line, None, f"{key} {url!r} is not an absolute http(s) "
                                    "URL (e.g. https://shop.example.com); every link in every "
                                    "message is built from it"))
    return problems


class TemplateChecks:
    """Checks the templates of journeys; each file's source is checked once however many
    journeys and locales use it."""

    def __init__(self, store: TemplateStore, settings: Settings,
                 locale_counts: Mapping[str, int] | None):
        self.store = store
        self.settings = settings
        self.counts = dict(locale_counts or {})
        self.store_ctx = configured_store(settings)
        self.configured_urls = {settings.public_base_url, self.store_ctx["url"]}
        self._checked: set[str] = set()
        self._flagged: set[tuple[str, int | None]] = set()  # lines with a source problem
        self._refs: dict[str, list[str]] = {}  # template -> templates it references
        self._linked: set[tuple[str, int | None, int | None, str]] = set()  # bad links reported

    def locales(self, name: str) -> list[str]:
        have = set(self.store.locales(name))
        return sorted(have | {self.settings.default_locale} | set(self.counts))

    def journey(self, j: CompiledJourney, loc: Locator) -> list[Problem]:
        problems: list[Problem] = []
        for i, step in enumerate(j.spec.steps):
            if isinstance(step, SendStep):
                problems += self._step(j, i, step, loc)
        return problems

    def _step(self, j: CompiledJourney, i: int, step: SendStep, loc: Locator) -> list[Problem]:
        send, store = step.send, self.store
        path = ("steps", i, "send", "template")
        if not store.exists(send.template, send.channel):
            return [loc.problem(path, f"no {send.channel} template {send.template!r}"
                                f"{did_you_mean(send.template, store.names(send.channel))} "
                                f"in {store.root}")]
        problems: list[Problem] = []
        marketing = "transactional" not in j.spec.tags
        for locale in self.locales(send.template):
            try:
                variant = store.resolve_locale(send.template, locale, send.channel)
            except TemplateRenderError as exc:
                problems.append(loc.problem(path, f"template {send.template!r} ({locale}): {exc}"))
                continue
            if locale in store.locales(send.template) and variant != locale:
                missing = [p for p in PARTS[send.channel]
                           if not (store.root / send.template / locale / p).is_file()]
                problems.append(loc.problem(path, f"template {send.template!r} ({locale}) has no "
                                            f"{', '.join(missing)}, so {locale} customers get the "
                                            f"{variant} variant"))
            elif variant != locale and self.counts.get(locale):
                n = self.counts[locale]
                problems.append(loc.problem(path, f"template {send.template!r} has no {locale} "
                                            f"variant: {n:,} customer(s) with locale {locale} "
                                            f"would get the {variant} one", "warning"))
            problems += self._sources(send.template, variant, send.channel)
            ctx = sample_context(locale, with_coupon=send.coupon is not None, journey=j.name,
                                 step=step.id, store=self.store_ctx,
                                 public_base_url=self.settings.public_base_url)
            try:
                rendered = store.render(send.template, send.channel, locale, ctx)
            except TemplateRenderError as exc:
                problems.append(loc.problem(path, f"template {send.template!r} ({locale}): {exc}"))
                continue
            what = f"{send.template!r} ({variant}"
            what += f", rendered for a {locale} customer)" if variant != locale else ")"
            if isinstance(rendered, RenderedEmail):
                problems += self._links(send.template, variant, rendered.html, ctx, what)
                if marketing:
                    problems += self._unsubscribe(rendered, ctx, what, loc, path)
            elif marketing and not any(w in rendered.text.lower() for w in OPT_OUT):
                problems.append(loc.problem(path, f"marketing SMS {what} has no opt-out line "
                                            "(e.g. \"Reply STOP to opt out\", \"拒收请回复R\")"))
        return problems

    def _sources(self, name: str, variant: str, channel: str) -> list[Problem]:
        problems = []
        for f in tc.template_files(self.store, name, variant, PARTS[channel], self._refs):
            if f not in self._checked:
                self._checked.add(f)
                found = tc.source_problems(self.store, f)
                self._flagged.update((p.file, p.line) for p in found)
                problems += found
        return problems

    def _links(self, name: str, variant: str, html: str, ctx: dict[str, Any],
               what: str) -> list[Problem]:
        problems = []
        for tag, attr, value in tc.bad_links(html):
            if value in self.configured_urls:
                continue  # config_problems names the setting
            file, line, col = tc.locate_link(self.store, f"{name}/{variant}/body.html.j2", attr,
                                             value, ctx, self._refs)
            if (file, line) in self._flagged or (file, line, col, value) in self._linked:
                continue  # explained already: by the source check, or for another locale
            self._linked.add((file, line, col, value))
            problems.append(Problem(file, line, col, f"<{tag} {attr}={value!r}> in {what} is not "
                                    "an absolute http(s) or mailto: URL after rendering; a mail "
                                    "client cannot follow it"))
        return problems

    @staticmethod
    def _unsubscribe(rendered: RenderedEmail, ctx: dict[str, Any], what: str, loc: Locator,
                     path: tuple[Any, ...]) -> list[Problem]:
        url = ctx["links"]["unsubscribe"]
        problems = []
        if not any(tag == "a" and attr == "href" and value == url
                   for tag, attr, value in tc.links(rendered.html)):
            problems.append(loc.problem(path, f"marketing email {what} has no unsubscribe link in "
                                        "its HTML: add <a href=\"{{ links.unsubscribe }}\">"))
        if url not in rendered.text:
            problems.append(loc.problem(path, f"marketing email {what} has no unsubscribe link in "
                                        "its text part: add {{ links.unsubscribe }}"))
        return problems


def _unknown_stages(
    j: CompiledJourney, loc: Locator, stages: list[str], rules: str
) -> list[Problem]:
    """Errors for stages the rules do not define (a journey entering on one never starts)."""
    return [loc.problem(path, f"unknown stage {name!r}{did_you_mean(name, stages)}; the stages "
                        f"in {rules} are {', '.join(stages)}")
            for name, path in stage_refs(j.spec) if name not in stages]


def validate_paths(paths: Iterable[str | Path], settings: Settings,
                   policy: ProjectPolicy | None = None,
                   locale_counts: Mapping[str, int] | None = None) -> list[Problem]:
    """Every problem (errors and warnings) in the given files or directories.

    ``locale_counts`` (customers per locale) defaults to what the project's database holds.
    """
    policy = policy or ProjectPolicy()
    store = TemplateStore(settings.templates_dir, settings.default_locale)
    problems: list[Problem] = config_problems(settings)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += journey_files(p) + [p / n for n in sorted(NOT_JOURNEYS) if (p / n).is_file()]
        elif p.exists():
            files.append(p)
        else:
            problems.append(Problem(str(p), None, None, "no such file or directory"))
    checks = TemplateChecks(store, settings,
                            customer_locales(settings) if locale_counts is None else locale_counts)
    stages: dict[Path, tuple[list[str], str]] = {}  # directory -> (stage names, where from)

    def stages_for(directory: Path) -> tuple[list[str], str]:
        if directory not in stages:
            rules = next((d / RULES_FILE for d in (directory, settings.journeys_dir)
                          if (d / RULES_FILE).is_file()), None)
            names = _stage_rules(rules)[1] if rules else None
            stages[directory] = (
                (names, str(rules)) if names else (list(STAGES), "the built-in rules")
            )
        return stages[directory]

    seen: dict[str, str] = {}
    tiers = _programme_tiers(files)
    for f in files:
        if f.name in NOT_JOURNEYS:
            problems += _loyalty(f) if f.name == LOYALTY_FILE else _stage_rules(f)[0]
            continue
        try:
            j = load_journey(f, policy)
        except SpecError as exc:
            problems += exc.problems
            continue
        names, rules = stages_for(f.resolve().parent)
        problems += duplicate_name(j, seen)
        problems += [w for w in j.warnings if not w.message.startswith("unknown stage ")]
        loc = parse_yaml(j.source, j.file)[1]
        problems += _unknown_stages(j, loc, names, rules) + checks.journey(j, loc)
        problems += tier_problems(j, tiers)
    return list(dict.fromkeys(problems))
