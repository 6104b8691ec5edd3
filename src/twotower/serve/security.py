"""What makes the service safe without configuration, kept apart from the routes.

Defaults: bound to loopback (``serve``), admin routes *disabled* until an admin key is set, no
CORS headers until origins are named, request bodies capped by the bytes actually read (chunked
bodies included, not only ``Content-Length``), validation errors that never echo the input, and
error bodies that never show a filesystem path. Optional: a client key for ``/retrieve`` and
``/metadata`` (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``; the admin key works there too).
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse

from twotower.errors import ConfigError

ADMIN_DISABLED = ("admin endpoints are disabled: start the service with --api-key KEY (or set "
                  "TWOTOWER_API_KEY) to enable them")


@dataclass(frozen=True)
class SecurityConfig:
    """``api_key``: admin routes need it (and are off without it); ``client_key``: when set,
    ``/retrieve`` and ``/metadata`` need it (or the admin key); ``cors_origins``: origins allowed
    by CORS (none by default); ``max_body_bytes``: largest request body read."""

    api_key: Optional[str] = None
    client_key: Optional[str] = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("api_key", "client_key"):
            key = getattr(self, name)
            if key is not None and not key.strip():
                raise ConfigError(f"{name} is empty: leave it unset or give a real key")


# ---------------------------------------------------------------- keys
def presented_key(request: Request) -> Optional[str]:
    """The key a request carries: ``X-API-Key``, else an ``Authorization: Bearer`` token."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _matches(given: Optional[str], *keys: Optional[str]) -> bool:
    if not given:
        return False
    raw = given.encode("utf-8", "surrogateescape")
    # compare against every key (constant time each) so timing does not tell which one is set
    return any([hmac.compare_digest(raw, k.encode()) for k in keys if k is not None])


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing or wrong API key (send X-API-Key: KEY or "
                              "Authorization: Bearer KEY)", headers={"WWW-Authenticate": "Bearer"})


def admin_guard(security: SecurityConfig):
    """FastAPI dependency of the admin routes: 403 while no admin key is configured, 401 on a
    missing or wrong key."""

    def guard(request: Request) -> None:
        if security.api_key is None:
            raise HTTPException(403, ADMIN_DISABLED)
        if not _matches(presented_key(request), security.api_key):
            raise _unauthorized()

    return guard


def client_guard(security: SecurityConfig):
    """FastAPI dependency of the read routes: open unless a client key is configured."""

    def guard(request: Request) -> None:
        if security.client_key is not None and not _matches(
                presented_key(request), security.client_key, security.api_key):
            raise _unauthorized()

    return guard


# ---------------------------------------------------------------- error bodies
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"(),;]+/)*[^\s/:'\"(),;]*")


def public_message(text: str, roots: Iterable[Path | str] = ()) -> str:
    """``text`` without filesystem paths: a path under one of ``roots`` (the run folder) becomes
    relative to it, any other absolute path is cut to its last part."""
    for root in roots:
        for form in {str(Path(root).resolve()), str(Path(root)), str(Path(root).absolute())}:
            if form not in ("", ".", "/"):
                text = text.replace(form.rstrip("/") + "/", "").replace(form, "<run>")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def install_error_handlers(app: FastAPI, roots: Iterable[Path | str] = ()) -> None:
    """422s list ``loc`` / ``msg`` / ``type`` only (the echoed input could be huge, or a value such
    as Infinity that JSON cannot encode, which used to turn a 422 into a 500); HTTP errors and
    unexpected ones never show a path or a traceback."""
    roots = tuple(roots)

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [x if isinstance(x, (int, str)) else str(x) for x in e.get("loc", ())],
                   "msg": public_message(str(e.get("msg", "")), roots),
                   "type": str(e.get("type", "value_error"))} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, str):
            detail = public_message(detail, roots)
        elif isinstance(detail, list):  # 422-shaped lists raised by routes
            detail = [dict(d, msg=public_message(str(d["msg"]), roots))
                      if isinstance(d, dict) and "msg" in d else d for d in detail]
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error"}, 500)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


# ---------------------------------------------------------------- body limit
class BodyLimitMiddleware:
    """Read at most ``max_bytes`` of a request body, then hand the buffered body to the app.

    Counts what arrives, so a chunked body (no ``Content-Length``) or one that lies about its
    length is cut at the limit with a 413 instead of being read into memory whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _reply(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(length) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away: let the app see it
                pending = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay():
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        await _reply(scope, receive, send, 413, f"request body over {self.max_bytes} bytes")


async def _reply(scope, receive, send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status, headers={"Connection": "close"})(
        scope, receive, send)


def install_middleware(app: FastAPI, security: SecurityConfig) -> None:
    """Body limit, then (outermost, so even a 413 carries it) CORS when origins are given."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=security.max_body_bytes)
    if security.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(security.cors_origins),
                           allow_methods=["GET", "POST"], allow_credentials=False,
                           allow_headers=["content-type", "x-api-key", "authorization"])
