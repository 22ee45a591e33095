"""Swagger UI (``/docs``) and ReDoc (``/redoc``) served with assets from an installed package, never a CDN.

FastAPI's own pages load their JavaScript, CSS and favicon from public CDNs (and ReDoc its fonts from Google):
blank in an air-gapped cluster. The assets here come from the ``fastapi-offline`` distribution (Swagger UI's
bundle and CSS, ReDoc's standalone bundle, a favicon), installed in the image like any dependency, and are
answered by the API itself under ``/docs/assets/``. Like ``/openapi.json``, the pages and the assets need no
token: they describe the API and hold nothing of the catalog.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

#: The package whose ``static`` directory holds the assets.
ASSET_PACKAGE = "fastapi_offline"
ASSETS_PATH = "/docs/assets"
#: Every asset served, with its media type: nothing else of the package is reachable.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


@cache
def asset_bytes(name: str) -> bytes:
    """The bytes of one asset (read once, then kept: about 2.8 MB for all of them)."""
    return (resources.files(ASSET_PACKAGE) / "static" / name).read_bytes()


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and ``/docs/assets/{name}`` to ``app`` (built with ``docs_url=None`` and
    ``redoc_url=None``, so FastAPI's CDN pages are not there)."""

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        prefix = base(request)
        return get_swagger_ui_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{ASSETS_PATH}/favicon.png",
            # No validator badge: Swagger UI would send the document to a public validation service.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        prefix = base(request)
        return get_redoc_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(status_code=404, detail=f"no documentation asset named {name!r}")
        return Response(asset_bytes(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
