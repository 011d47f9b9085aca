"""The coverage scenario: three journeys with known effects, for the benchmark and the tests.

- ``boost``: customers at risk get a check-in email that lifts their purchase rate by 50% for
  14 days (a real effect the lift report should find, and cover with its interval);
- ``placebo``: new customers get a thank-you email that changes nothing (a zero effect the
  report must not call a winner);
- ``costly``: active and loyal customers get a 50% coupon that most of them (90%) redeem on
  purchases they would have made anyway; it lifts purchases by 5%, far less than it costs (the
  net incremental revenue is negative).

Each journey holds out half of its entrants, so one simulated store of a few thousand
customers gives both groups a few hundred enrollments.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clm_core.db.migrate import open_database
from clm_core.delivery.unsubscribe import ensure_key_file, signing_key
from clm_core.journeys.store import load_journeys, project_policy
from clm_core.measure.attribution import rebuild
from clm_core.measure.lift import Comparison, lift
from clm_core.settings import load_settings
from clm_core.simulate.effects import load_effects
from clm_core.simulate.inprocess import lifecycle_step
from clm_core.simulate.store import SimConfig, Simulation
from clm_core.simulate.truth import JourneyTruth, enrollments_truth, journey_truths

JOURNEYS = {
    "boost": """
name: boost
description: Check in with customers at risk.
status: active
priority: 70
entry:
  segment: {field: stage, eq: at_risk}
  reentry: {policy: once}
goals:
  - id: ordered
    order: {}
holdout: {percent: 50}
steps:
  - id: check_in
    send: {channel: email, template: at_risk_checkin}
  - id: measure
    wait: 14d
  - id: done
    exit: {}
""",
    "placebo": """
name: placebo
description: Thank new customers (changes nothing).
status: active
priority: 50
entry:
  segment: {field: stage, eq: new}
  reentry: {policy: once}
goals:
  - id: second_order
    order: {}
holdout: {percent: 50}
steps:
  - id: thank_you
    send: {channel: email, template: welcome_thanks}
  - id: measure
    wait: 14d
  - id: done
    exit: {}
""",
    "costly": """
name: costly
description: A generous coupon for active and loyal customers.
status: active
priority: 40
entry:
  segment: {field: stage, in: [active, loyal]}
  reentry: {policy: once}
goals:
  - id: ordered
    order: {}
holdout: {percent: 50}
steps:
  - id: offer
    send:
      channel: email
      template: at_risk_offer
      coupon: {kind: percent, value: 50, expires_in_days: 14}
  - id: measure
    wait: 14d
  - id: done
    exit: {}
""",
}

EFFECTS = """effects:
  - journey: boost
    purchase_lift: 0.5
    days: 14
  - journey: placebo
    purchase_lift: 0.0
    days: 14
  - journey: costly
    purchase_lift: 0.05
    days: 14
    coupon: {redeem: 0.9}
"""


def write_scenario(project: Path) -> Path:
    """Replace the project's journeys (keeping its stage rules) with the scenario's; write
    ``effects.yaml`` beside them; fit with a small penalizer. Returns the effects file."""
    journeys = project / "journeys"
    for path in journeys.glob("*.yaml"):
        if path.name != "lifecycle.yaml":
            path.unlink()
    for name, text in JOURNEYS.items():
        (journeys / f"{name}.yaml").write_text(text.lstrip(), encoding="utf-8")
    effects = project / "effects.yaml"
    effects.write_text(EFFECTS, encoding="utf-8")
    # a small penalty keeps the Gamma-Gamma fit converging on every seed's small store
    toml = project / "clm.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("# penalizer = 0.0",
                                                             "penalizer = 0.001"),
                    encoding="utf-8")
    return effects


def copy_project(source: Path, target: Path) -> Path:
    """A fresh copy of a prepared project (clm.toml, journeys, templates) for another store."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.db", "*.db-*", ".clm",
                                                                 "simulation"))
    return target


@dataclass(frozen=True)
class Measured:
    """One journey of one simulated store: what ``lift`` reported and what is true."""

    seed: int
    journey: str
    report: Comparison
    truth: JourneyTruth

    @property
    def true_net(self) -> float:
        """True incremental revenue of the treated, net of the coupons they redeemed."""
        return self.truth.revenue_effect * self.report.treated - self.report.coupon_cost


def measure_store(project: Path, seed: int, customers: int, days: int,
                  every_days: int) -> list[Measured]:
    """Simulate one store in ``project`` (its clm.toml names the database and a running
    sandbox) with the lifecycle in process, then the real attribution and lift, beside the
    truth, per journey with an effect."""
    settings = load_settings(project, env={})
    engine = open_database(settings.database_url)
    try:
        ensure_key_file(settings)
        policy = project_policy(settings.section("journeys"))
        journeys = load_journeys(settings.journeys_dir, policy)
        sim = Simulation(engine, SimConfig(customers=customers, days=days, seed=seed,
                                           every_days=every_days),
                         load_effects(project / "effects.yaml"), journeys, policy)
        # one fit for the whole run, as a store refitting monthly would have
        sim.run(lifecycle_step(engine, settings, signing_key(settings),
                               fit_max_age_days=days + 1.0))
        rebuild(engine, sim.end, policy)
        report = {c.journey: c for c in lift(engine).comparisons if c.scope == "journey"}
        truths = journey_truths(sim, enrollments_truth(sim, engine))
    finally:
        engine.dispose()
    return [Measured(seed, x.journey, report[x.journey], x) for x in truths
            if x.journey in report]
