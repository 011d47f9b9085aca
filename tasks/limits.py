"""Provider rate limits shared by every flow run and worker, as Prefect global concurrency
limits. ``clm limits`` creates them from ``[delivery]``; dispatch tasks take slots from them
with ``rate_limit(..., strict=True)`` so a missing limit fails loudly instead of running
unthrottled."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound

from clm_core.delivery.config import load_delivery_config
from clm_core.settings import Settings


def limit_name(provider: str) -> str:
    return f"clm-rate-{provider}"


def wanted_limits(settings: Settings) -> dict[str, tuple[int, float]]:
    """name -> (slots, slots freed per second) for every configured provider with a rate."""
    out: dict[str, tuple[int, float]] = {}
    for cfg in load_delivery_config(settings).channels.values():
        rate = float(cfg.rate_per_second or 0)
        if rate > 0:
            # One second of burst; every request to the provider takes one slot.
            out[limit_name(cfg.name)] = (max(1, int(rate)), rate)
    return out


def apply_limits(settings: Settings) -> list[tuple[str, int, float]]:
    done = []
    with get_client(sync_client=True) as client:
        for name, (limit, decay) in wanted_limits(settings).items():
            try:
                client.read_global_concurrency_limit_by_name(name)
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                    limit=limit, slot_decay_per_second=decay, active=True))
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=limit, slot_decay_per_second=decay, active=True))
            done.append((name, limit, decay))
    return done
