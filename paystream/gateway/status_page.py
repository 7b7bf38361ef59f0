"""The status page for frontends: ``/status/<payment id>`` and ``/status/account/<account id>``.

Static files shipped in the package (``gateway/static``), no build step. The page takes an API
key from its form or from the URL fragment (``#key=...``, never sent to the server) and follows
``paymentStatus`` or ``accountActivity`` over graphql-transport-ws on this same origin. The
server never puts anything into the page: ids are read by the script from the location, and
data is shown with ``textContent``. The page holds no secret, so it is served in every mode.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# What the page may do: its own script and style, and talk to this origin (`'self'` covers
# ws:// and wss:// to the same host in CSP level 3). No inline code, no framing, no referrer.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

_ASSETS = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}


def _load() -> dict[str, bytes]:
    static = files("paystream.gateway") / "static"
    return {name: (static / name).read_bytes() for name in _ASSETS}


def status_page_routes() -> list[Route]:
    """Routes serving the page (read once, at app creation) and its script and style."""
    assets = _load()

    def asset(name: str) -> Response:
        return Response(assets[name], media_type=_ASSETS[name], headers=_HEADERS)

    async def page(request: Request) -> Response:
        return asset("status.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets or name == "status.html":
            return Response("not found", status_code=404, media_type="text/plain")
        return asset(name)

    return [
        Route("/status/{payment_id:uuid}", page, methods=["GET"]),
        Route("/status/account/{account_id:uuid}", page, methods=["GET"]),
        Route("/status/assets/{name}", static, methods=["GET"]),
    ]
