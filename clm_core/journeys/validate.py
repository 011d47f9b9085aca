"""``clm validate``: journeys, stage rules and the templates journeys use, every problem located.

Templates are rendered for sample customers in each locale they provide, in the sandbox with
undefined-variable errors, with a coupon exactly when the step gives one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from clm_core.errors import Problem, SpecError, TemplateRenderError
from clm_core.journeys.loader import CompiledJourney, load_journey
from clm_core.journeys.model import ProjectPolicy, SendStep
from clm_core.journeys.store import NOT_JOURNEYS, duplicate_name, journey_files
from clm_core.loyalty.spec import LOYALTY_FILE, load_programme
from clm_core.settings import Settings
from clm_core.suggest import did_you_mean
from clm_core.templating import TemplateStore, sample_context
from clm_core.yamlspec import parse_yaml

UNSUBSCRIBE = sample_context()["links"]["unsubscribe"]
# words of an SMS opt-out line ("Reply STOP to opt out", "拒收请回复R", "回复TD退订")
OPT_OUT = ("stop", "opt out", "opt-out", "unsubscribe", "退订", "拒收")


def _stage_rules(path: Path) -> list[Problem]:
    try:
        from clm_core.lifecycle.stages import load_rules  # type: ignore[import-not-found]
    except ImportError:  # stage rules validator not installed: check the YAML at least
        try:
            parse_yaml(path.read_text(encoding="utf-8-sig"), str(path))
        except SpecError as exc:
            return exc.problems
        return []
    try:
        load_rules(path)
    except SpecError as exc:
        return exc.problems
    return []


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
    refs = [(entry.to, ("entry", "tier", "to"))] if entry.to else []
    refs += [(name, ("entry", "tier", "from", i)) for i, name in enumerate(entry.from_ or [])
             if name != "none"]  # "none": not a member before
    return [loc.problem(path, f"unknown tier {name!r}{did_you_mean(name, tiers)}; the "
                        f"programme's tiers: {', '.join(tiers)} (and 'none' in from)")
            for name, path in refs if name not in tiers]


def template_problems(j: CompiledJourney, store: TemplateStore) -> list[Problem]:
    """Unknown templates, templates that fail to render, emails without an unsubscribe link."""
    _, loc = parse_yaml(j.source, j.file)
    problems: list[Problem] = []
    marketing = "transactional" not in j.spec.tags
    for i, step in enumerate(j.spec.steps):
        if not isinstance(step, SendStep):
            continue
        send = step.send
        path = ("steps", i, "send", "template")
        if not store.exists(send.template, send.channel):
            problems.append(loc.problem(path, f"no {send.channel} template {send.template!r}"
                                        f"{did_you_mean(send.template, store.names(send.channel))} "
                                        f"in {store.root}"))
            continue
        for locale in store.locales(send.template):
            ctx = sample_context(locale, with_coupon=send.coupon is not None,
                                 journey=j.name, step=step.id)
            try:
                rendered = store.render(send.template, send.channel, locale, ctx)
            except TemplateRenderError as exc:
                problems.append(loc.problem(path, f"template {send.template!r} ({locale}): {exc}"))
                continue
            if send.channel == "email" and marketing and UNSUBSCRIBE not in rendered.html:  # type: ignore[union-attr]
                problems.append(loc.problem(path, f"marketing email {send.template!r} ({locale}) "
                                            "has no unsubscribe link: add {{ links.unsubscribe }}",
                                            "warning"))
            if send.channel == "sms" and marketing and not any(
                    w in rendered.text.lower() for w in OPT_OUT):
                problems.append(loc.problem(path, f"marketing SMS {send.template!r} ({locale}) has "
                                            "no opt-out line (e.g. \"Reply STOP to opt out\", "
                                            "\"拒收请回复R\")", "warning"))
    return problems


def validate_paths(paths: Iterable[str | Path], settings: Settings,
                   policy: ProjectPolicy | None = None) -> list[Problem]:
    """Every problem (errors and warnings) in the given files or directories."""
    policy = policy or ProjectPolicy()
    store = TemplateStore(settings.templates_dir, settings.default_locale)
    problems: list[Problem] = []
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += journey_files(p) + [p / n for n in sorted(NOT_JOURNEYS) if (p / n).is_file()]
        elif p.exists():
            files.append(p)
        else:
            problems.append(Problem(str(p), None, None, "no such file or directory"))
    seen: dict[str, str] = {}
    tiers = _programme_tiers(files)
    for f in files:
        if f.name in NOT_JOURNEYS:
            problems += _loyalty(f) if f.name == LOYALTY_FILE else _stage_rules(f)
            continue
        try:
            j = load_journey(f, policy)
        except SpecError as exc:
            problems += exc.problems
            continue
        problems += duplicate_name(j, seen) + j.warnings + template_problems(j, store)
        problems += tier_problems(j, tiers)
    return problems
