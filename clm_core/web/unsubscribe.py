"""``/u/{token}`` (unsubscribe, RFC 8058 one-click) and ``/p/{token}`` (preferences).

- ``GET /u/{token}`` changes nothing (mail scanners follow links): it shows a page in the
  customer's locale with one button that POSTs, and a link to the preferences.
- ``POST /u/{token}`` unsubscribes the token's channel at once: form-urlencoded or multipart
  body (``List-Unsubscribe=One-Click``), no cookie, no login, no redirect; idempotent.
- ``GET /p/{token}`` shows per-channel and per-topic choices; ``POST /p/{token}`` saves them
  with a CSRF token bound to the link (and the Origin, when the browser sends one).
- An altered, expired or foreign token gets a 400 page and changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from clm_core.consent import subscriptions
from clm_core.consent.config import load_consent_config
from clm_core.consent.tokens import SUBSCRIPTION, Claims, check_csrf, csrf_token
from clm_core.delivery.config import DeliveryConfig
from clm_core.errors import TokenError
from clm_core.web.app import Web
from clm_core.web.html import message_page, page
from clm_core.web.wording import TEXT, locale_from_accept_language, mask_address, pick_locale

CHANNELS = ("email", "sms")


def client_metadata(request: Request) -> dict[str, Any]:
    """Minimal request metadata for the ledger's evidence: the network (IPv4 /24, IPv6 /48),
    not the address, and a truncated user agent."""
    meta: dict[str, Any] = {"user_agent": (request.headers.get("user-agent") or "")[:120]}
    host = request.client.host if request.client else None
    try:
        ip = ipaddress.ip_address(host or "")
        meta["network"] = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}",
                                                   strict=False))
    except ValueError:
        pass
    return meta


def routes(web: Web) -> list[BaseRoute]:
    consent = load_consent_config(web.settings)
    store = str(web.settings.section("delivery").get("store_name", DeliveryConfig.store_name))
    writer = web.writer

    def verify(request: Request) -> Claims:
        return web.keyring.verify(request.path_params["token"], SUBSCRIPTION, web.clock())

    def invalid(request: Request) -> Response:
        return message_page(locale_from_accept_language(request.headers.get("accept-language")),
                            store=store, title_key="invalid_title", body_key="invalid_body",
                            status=400)

    def verified(handler: Callable[[Request, Claims], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """The handler with the path's token verified; the 400 page when it does not verify."""
        async def endpoint(request: Request) -> Response:
            try:
                claims = verify(request)
            except TokenError:
                return invalid(request)
            return await handler(request, claims)
        return endpoint

    def links(request: Request) -> dict[str, Any]:
        token = request.path_params["token"]
        return {"action": f"/u/{token}", "preferences": f"/p/{token}"}

    async def unsubscribe_page(request: Request, claims: Claims) -> Response:
        sub = await run_in_threadpool(subscriptions.load_subscriber, web.engine, claims)
        locale = (pick_locale(sub.locale) if sub else
                  locale_from_accept_language(request.headers.get("accept-language")))
        if sub is None:
            return page("unsubscribe.html", locale, store=store, title=TEXT[locale][
                "unsubscribe_title"], unknown=True, already=False, question="", **links(request))
        question = TEXT[locale][f"unsubscribe_{claims.channel}"].format(
            store=store, address=mask_address(sub.address(claims.channel)))
        return page("unsubscribe.html", locale, store=store, unknown=False,
                    title=TEXT[locale]["unsubscribe_title"], question=question,
                    already=not sub.state.allows(claims.channel), **links(request))

    async def unsubscribe_post(request: Request, claims: Claims) -> Response:
        form = await _form(request)
        evidence = {"via": "one_click_post",
                    "one_click": form.get("List-Unsubscribe") == "One-Click",
                    **client_metadata(request)}
        done = await run_in_threadpool(
            lambda: subscriptions.unsubscribe(writer, claims, now=web.clock(), evidence=evidence,
                                              wording_version=consent.wording_version))
        sub = done.subscriber
        locale = pick_locale(sub.locale if sub else None)
        message = TEXT[locale][f"done_{claims.channel}"].format(
            store=store, address=mask_address(sub.address(claims.channel) if sub else ""))
        return page("done.html", locale, store=store, title=TEXT[locale]["done_title"],
                    message=message, preferences=links(request)["preferences"])

    def preferences_page(request: Request, claims: Claims, sub: subscriptions.Subscriber,
                         notice: str | None = None) -> Response:
        locale = pick_locale(sub.locale)
        text = TEXT[locale]
        channels = []
        for ch in CHANNELS:
            address = sub.address(ch)
            if not address:
                continue
            channels.append(
                {
                    "field": f"ch_{ch}",
                    "checked": sub.state.allows(ch),
                    "legend": text[f"legend_{ch}"],
                    "label": text[f"channel_{ch}"].format(address=mask_address(address)),
                    "topics": [
                        {
                            "field": f"topic_{ch}_{tp}",
                            "checked": sub.state.wants(ch, tp),
                            "label": consent.label(tp, locale),
                        }
                        for tp in consent.topics
                    ],
                }
            )
        return page("preferences.html", locale, store=store, title=text["preferences_title"],
                    intro=text["preferences_intro"].format(store=store), channels=channels,
                    csrf=csrf_token(web.keyring, claims.token_id, web.clock()), notice=notice,
                    action=f"/p/{request.path_params['token']}")

    async def preferences_get(request: Request, claims: Claims) -> Response:
        sub = await run_in_threadpool(subscriptions.load_subscriber, web.engine, claims)
        if sub is None:
            return message_page(locale_from_accept_language(request.headers.get(
                "accept-language")), store=store, title_key="preferences_title",
                body_key="unknown_customer", status=200)
        return preferences_page(request, claims, sub)

    async def preferences_post(request: Request, claims: Claims) -> Response:
        form = await _form(request)
        sub = await run_in_threadpool(subscriptions.load_subscriber, web.engine, claims)
        locale = pick_locale(sub.locale if sub else None)
        if (not _same_origin(request, web.base_url)
                or not check_csrf(web.keyring, str(form.get("csrf", "")), claims.token_id,
                                  web.clock())):
            return message_page(locale, store=store, title_key="csrf_title",
                                body_key="csrf_body", status=403)
        if sub is None:
            return message_page(locale, store=store, title_key="preferences_title",
                                body_key="unknown_customer", status=200)
        choices: dict[tuple[str, str | None], bool] = {}
        for ch in CHANNELS:
            if sub.address(ch):
                choices[(ch, None)] = form.get(f"ch_{ch}") == "on"
                for tp in consent.topics:
                    choices[(ch, tp)] = form.get(f"topic_{ch}_{tp}") == "on"
        evidence = {"via": "preferences_form", **client_metadata(request)}
        done = await run_in_threadpool(
            lambda: subscriptions.save_preferences(writer, claims, choices, now=web.clock(),
                                                   evidence=evidence,
                                                   wording_version=consent.wording_version))
        after = done.subscriber or sub
        notice = TEXT[locale]["saved" if done.rows else "nothing_changed"]
        return preferences_page(request, claims, after, notice)

    return [
        Route("/u/{token}", verified(unsubscribe_page), methods=["GET"]),
        Route("/u/{token}", verified(unsubscribe_post), methods=["POST"]),
        Route("/p/{token}", verified(preferences_get), methods=["GET"]),
        Route("/p/{token}", verified(preferences_post), methods=["POST"]),
    ]


async def _form(request: Request) -> dict[str, str]:
    """Form fields of a urlencoded or multipart body (files ignored); {} for any other body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        await request.body()  # read (and size-check) whatever was sent
        return {}
    form = await request.form(max_files=0, max_fields=200)
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _same_origin(request: Request, base_url: str) -> bool:
    """No Origin, or ``Origin: null`` (what browsers send for a form on a page with
    ``Referrer-Policy: no-referrer``, as these pages have): the CSRF token decides alone.
    Otherwise it must be this service, as the public URL or as the request's own host."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return True
    host = urlsplit(origin).netloc
    return host in {urlsplit(base_url).netloc, request.headers.get("host", "")}
