"""``GET /c/{token}``: record a click on a tracked link, then 302 to the signed target.

The target comes only from the verified token, so nobody can use the service to redirect
elsewhere; an altered, expired or foreign token gets the 400 page and no redirect. HEAD (link
checkers) redirects without recording anything.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clm_core.consent.tokens import CLICK
from clm_core.delivery.config import DeliveryConfig
from clm_core.errors import TokenError
from clm_core.tracking import load_tracking_config, record_click
from clm_core.web.app import Web
from clm_core.web.html import message_page
from clm_core.web.wording import locale_from_accept_language


def routes(web: Web) -> list[BaseRoute]:
    config = load_tracking_config(web.settings)
    store = str(web.settings.section("delivery").get("store_name", DeliveryConfig.store_name))

    async def click(request: Request) -> Response:
        now = web.clock()
        try:
            claims = web.keyring.verify(request.path_params["token"], CLICK, now)
            if not (claims.url or "").lower().startswith(("http://", "https://")):
                raise TokenError("the link has no web address")
        except TokenError:
            return message_page(locale_from_accept_language(request.headers.get(
                "accept-language")), store=store, title_key="invalid_title",
                body_key="invalid_body", status=400)
        if request.method == "GET":
            await run_in_threadpool(
                lambda: record_click(web.writer, claims, user_agent=request.headers.get(
                    "user-agent"), clicked_at=now, config=config))
        return RedirectResponse(str(claims.url), status_code=302,
                                headers={"Cache-Control": "no-store",
                                         "Referrer-Policy": "no-referrer"})

    return [Route("/c/{token}", click, methods=["GET", "HEAD"])]
