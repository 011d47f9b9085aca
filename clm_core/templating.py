"""Message templates: Jinja2 in a sandbox, per-locale variants, inlined CSS, SMS cost.

Layout (one directory per template, one per locale inside)::

    templates/<name>/<locale>/subject.txt.j2   email subject (one line)
    templates/<name>/<locale>/body.html.j2     email HTML (CSS in <style> is inlined)
    templates/<name>/<locale>/body.txt.j2      email plain text
    templates/<name>/<locale>/sms.txt.j2       SMS text
    templates/_layouts/...                     shared layouts for {% extends %} / {% include %}

A locale falls back to its language, then the default locale, then ``en``: zh-CN -> zh ->
default -> en. Templates are input, not code: the sandbox blocks Python internals and every
undefined variable is an error naming the file and line.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import css_inline
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from clm_core.errors import TemplateRenderError
from clm_core.settings import Settings

EMAIL_PARTS = ("subject.txt.j2", "body.html.j2", "body.txt.j2")
SMS_PARTS = ("sms.txt.j2",)
PARTS = {"email": EMAIL_PARTS, "sms": SMS_PARTS}

# GSM 03.38 basic set; the extension table's characters take two septets each.
_GSM_BASIC = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLM"
                 "NOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM_EXT = set("^{}\\[~]|€\f")
_GSM = frozenset(_GSM_BASIC | _GSM_EXT)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    locale: str


@dataclass(frozen=True)
class RenderedSms:
    text: str
    locale: str
    encoding: str  # GSM-7 or UCS-2
    length: int  # in the encoding's units (septets or UTF-16 code units)
    segments: int


def sms_cost(text: str) -> tuple[str, int, int]:
    """(encoding, length, segments): GSM-7 160/153 per part, else UCS-2 70/67."""
    # Set operations over the text's distinct characters, not a generator per character: this
    # runs for every SMS a dispatch renders.
    chars = set(text)
    if chars <= _GSM:
        ext = chars & _GSM_EXT
        length = len(text) + (sum(text.count(c) for c in ext) if ext else 0)
        single, multi, enc = 160, 153, "GSM-7"
    else:
        length = len(text.encode("utf-16-le")) // 2
        single, multi, enc = 70, 67, "UCS-2"
    segments = 1 if length <= single else math.ceil(length / multi)
    return enc, length, segments


def locale_chain(locale: str | None, default: str) -> list[str]:
    chain = []
    for candidate in (locale, (locale or "").split("-")[0], default, default.split("-")[0], "en"):
        if candidate and candidate not in chain:
            chain.append(candidate)
    return chain


def _money(value: Any, currency: str = "USD") -> str:
    symbols = {"USD": "$", "CNY": "¥", "EUR": "€", "GBP": "£"}
    return f"{symbols.get(currency, currency + ' ')}{float(value):,.2f}"


def _date(value: Any, fmt: str = "%Y-%m-%d") -> str:
    return value.strftime(fmt) if hasattr(value, "strftime") else str(value)


class TemplateStore:
    """The project's templates, rendered in a sandbox with undefined-variable errors."""

    def __init__(self, templates_dir: str | Path, default_locale: str = "en", *,
                 reload: bool = True):
        """``reload=False`` compiles each template once for the store's life: no look at the
        file's time before every render (a stat per message, in a dispatch run that renders
        thousands a second from templates that do not change under it)."""
        self.root = Path(templates_dir)
        self.default_locale = default_locale
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html")),
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=reload,
        )
        self.env.filters["money"] = _money
        self.env.filters["date"] = _date
        self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False)
        self._present: dict[tuple[str, str, str], bool] = {}

    def locales(self, name: str) -> list[str]:
        d = self.root / name
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def exists(self, name: str, channel: str) -> bool:
        return any(self._has(name, loc, channel) for loc in self.locales(name))

    def names(self, channel: str | None = None) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and not p.name.startswith("_")
            and (channel is None or self.exists(p.name, channel))
        )

    def _has(self, name: str, locale: str, channel: str) -> bool:
        key = (name, locale, channel)
        if key not in self._present:  # every render asks: look at the disk once per store
            self._present[key] = all((self.root / name / locale / part).is_file()
                                     for part in PARTS[channel])
        return self._present[key]

    def resolve_locale(self, name: str, locale: str | None, channel: str) -> str:
        for candidate in locale_chain(locale, self.default_locale):
            if self._has(name, candidate, channel):
                return candidate
        have = self.locales(name)
        if not have:
            raise TemplateRenderError(f"no template {name!r} in {self.root}"
                                      + _suggest(name, self.names(channel)))
        raise TemplateRenderError(
            f"template {name!r} has no complete {channel} variant for locale "
            f"{locale!r} or its fallbacks (has: {', '.join(have)}; an {channel} "
            f"template needs {', '.join(PARTS[channel])})"
        )

    def render_part(self, name: str, locale: str, part: str, context: dict[str, Any]) -> str:
        path = f"{name}/{locale}/{part}"
        try:
            return self.env.get_template(path).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateRenderError(
                f"{exc.filename or path}:{exc.lineno}: syntax: {exc.message}"
            ) from None
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(
                f"{self._where(exc, path)}: undefined: {exc.message}"
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateRenderError(
                f"{self._where(exc, path)}: blocked by the template sandbox: {exc}"
            ) from None
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(f"{self._where(exc, path)}: {exc}") from None
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise TemplateRenderError(
                f"{self._where(exc, path)}: {type(exc).__name__}: {exc}"
            ) from None

    def _where(self, exc: BaseException, path: str) -> str:
        """file:line of the innermost template frame of ``exc``."""
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
        if frames:
            f = frames[-1]
            rel = Path(f.filename)
            try:
                rel = rel.relative_to(self.root.resolve())
            except ValueError:
                pass
            return f"{self.root.name}/{rel}:{f.lineno}"
        return f"{self.root.name}/{path}"

    def render_email(self, name: str, locale: str | None, context: dict[str, Any]) -> RenderedEmail:
        loc = self.resolve_locale(name, locale, "email")
        subject = " ".join(self.render_part(name, loc, "subject.txt.j2", context).split())
        html = self._inliner.inline(self.render_part(name, loc, "body.html.j2", context))
        text = self.render_part(name, loc, "body.txt.j2", context).strip() + "\n"
        return RenderedEmail(subject, html, text, loc)

    def render_sms(self, name: str, locale: str | None, context: dict[str, Any]) -> RenderedSms:
        loc = self.resolve_locale(name, locale, "sms")
        text = " ".join(self.render_part(name, loc, "sms.txt.j2", context).split())
        enc, length, segments = sms_cost(text)
        return RenderedSms(text, loc, enc, length, segments)

    def render(self, name: str, channel: str, locale: str | None,
               context: dict[str, Any]) -> RenderedEmail | RenderedSms:
        return self.render_email(name, locale, context) if channel == "email" \
            else self.render_sms(name, locale, context)


def _suggest(name: str, names: list[str]) -> str:
    from clm_core.suggest import did_you_mean

    return did_you_mean(name, names)


SAMPLE_BASE_URL = "https://clm.example.com"
SAMPLE_STORE = {"name": "Example Records", "url": "https://shop.example.com/"}


def configured_store(settings: Settings) -> dict[str, str]:
    """The store as messages show it (``[delivery] store_name`` and ``store_url``), the same
    values the dispatcher puts in ``store`` and ``links.shop``."""
    from clm_core.delivery.config import DeliveryConfig

    section = settings.section("delivery")
    return {"name": str(section.get("store_name", DeliveryConfig.store_name)),
            "url": str(section.get("store_url", DeliveryConfig.store_url))}


def sample_links(
    public_base_url: str, store_url: str, token: str = "sample-token"
) -> dict[str, str]:
    """``links`` as the dispatcher builds them (``delivery.unsubscribe.subscription_links``),
    for a made-up token."""
    base = public_base_url.rstrip("/")
    return {"unsubscribe": f"{base}/u/{token}", "preferences": f"{base}/p/{token}",
            "shop": store_url}



def first_name(name: str | None) -> str:
    """How a message addresses the customer: the first word of the name, or the whole name
    when it has no spaces (a Chinese name such as 王芳: "王芳，您好" reads naturally, the
    given name alone does not). Previews and dispatch both use this, so a preview shows what
    the customer gets."""
    name = (name or "").strip()
    return name.split()[0] if name else ""


def sample_context(locale: str = "en", *, with_coupon: bool = True, now: datetime | None = None,
                   journey: str = "sample", step: str = "step",
                   store: dict[str, str] | None = None,
                   public_base_url: str = SAMPLE_BASE_URL, token: str = "sample-token"
                   ) -> dict[str, Any]:
    """A realistic context for validation and previews (every documented variable set).

    ``store`` and ``public_base_url`` come from the project's configuration when there is one, so
    the links a check or a preview shows are the ones customers would get.
    """
    now = now or datetime(2026, 1, 15, 10, 0)
    store = dict(store or SAMPLE_STORE)
    zh = locale.startswith("zh")
    name = "王芳" if zh else "Alex Morgan"
    return {
        "customer": {
            "external_id": "sample-00001",
            "name": name,
            "first_name": first_name(name),
            "email": "sample.00001@example.com",
            "phone": "+8613800138000" if zh else "+12025550123",
            "locale": locale,
            "timezone": "Asia/Shanghai" if zh else "America/New_York",
            "attributes": {},
        },
        "scores": {
            "stage": "active",
            "rfm_segment": "loyal customers",
            "p_alive": 0.82,
            "clv_12m": 182.4,
            "expected_purchases_90d": 0.9,
            "n_orders": 4,
            "total_spend": 212.5,
            "avg_order_value": 53.1,
            "last_order_at": now - timedelta(days=41),
            "days_since_last_order": 41,
        },
        "loyalty": {
            "points_balance": 1240,
            "points_expiring_30d": 180,
            "next_expiry_at": now + timedelta(days=21),
            "tier": "silver",
            "tier_since": now - timedelta(days=60),
            "points_to_next_tier": 160.0,
        },
        "coupon": (
            {
                "code": "CLM-7K3Q-9XWD",
                "kind": "percent",
                "value": 15,
                "currency": "USD",
                "expires_at": now + timedelta(days=14),
            }
            if with_coupon
            else None
        ),
        "recommendations": [
            {"sku": "CD-JAZ-001", "name": "Jazz Album No. 1"},
            {"sku": "CD-ROC-004", "name": "Rock Album No. 4"},
            {"sku": "CD-POP-002", "name": "Pop Album No. 2"},
        ],
        "links": sample_links(public_base_url, store["url"], token),
        "store": store,
        "journey": {"name": journey, "step": step},
    }
