"""The web playground: a static page and its assets, shipped inside the package (no build step).

The page talks only to this server's own /api/v3 routes, so the policy below allows nothing else,
except images: outputs may live on an S3 or CDN host.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

router = APIRouter(include_in_schema=False)

#: Every file the page is made of, with its type. Nothing else under sdapi/web is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Output URLs may point at another host: never hand it the page's address.
    "Referrer-Policy": "no-referrer",
    # Revalidate, so an upgraded server never runs yesterday's app.js against today's HTML.
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    # Read once: the assets are part of the installed package and never change while it runs.
    return (files("sdapi") / "web" / name).read_bytes()


def _asset(name: str) -> Response:
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, "Not found")
    return _asset(name)
