"""``/docs`` without the internet: Swagger UI served from the files of the ``fastapi-offline``
package instead of FastAPI's default CDN links (a blank page on an offline machine).

Without that package installed the docs are off (a 404), never silently fetched from a CDN;
``twotower serve --no-docs`` turns them off explicitly. ``/openapi.json`` stays available.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_URL = "/docs-static"


def swagger_static_dir() -> Path | None:
    """Folder with ``swagger-ui-bundle.js`` / ``swagger-ui.css``, or None when not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css")
    return folder if all((folder / f).is_file() for f in needed) else None


def mount_offline_docs(app: FastAPI, docs_url: str = "/docs") -> bool:
    """Serve Swagger UI at ``docs_url`` from local files; False (docs off) when none are installed."""
    folder = swagger_static_dir()
    if folder is None:
        warnings.warn("no local Swagger UI files (pip install fastapi-offline): /docs is off; "
                      "the schema is still at /openapi.json", stacklevel=2)
        return False
    app.mount(STATIC_URL, StaticFiles(directory=folder), name="docs-static")
    favicon = f"{STATIC_URL}/favicon.png" if (folder / "favicon.png").is_file() else ""
    redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}",
                                   title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{favicon}" if favicon else "",
                                   oauth2_redirect_url=redirect)

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    return True
