"""Serve an ASGI app through uvicorn in a background thread, for tests over real HTTP."""

from clm_core.web.background import serving

__all__ = ["serving"]
