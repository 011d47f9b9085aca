"""The service's own pages: Jinja2 with autoescaping, so customer data is always escaped."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from clm_core.web.wording import TEXT

TEMPLATES = Path(__file__).with_name("templates")
# Pages hold capability links: no caching by proxies, no referrer leaking them, no framing.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"}


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined)


def render(name: str, locale: str, *, store: str, **context: Any) -> str:
    return environment().get_template(name).render(locale=locale, t=TEXT[locale], store=store,
                                                   **context)


def page(name: str, locale: str, *, store: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(name, locale, store=store, **context), status_code=status,
                        headers=HEADERS)


def message_page(locale: str, *, store: str, title_key: str, body_key: str,
                 status: int) -> HTMLResponse:
    text = TEXT[locale]
    return page("message.html", locale, store=store, status=status, title=text[title_key],
                body=text[body_key])
