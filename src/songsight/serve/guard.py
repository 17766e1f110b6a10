"""Errors as the API answers them: ``{"error", "message", "request_id"}`` JSON, never a traceback.

`Guard` (ASGI middleware) gives every response a request id and nosniff, and turns any
unhandled exception into a generic 500 with its traceback in the server log under that id;
`add_error_handlers` maps deliberate `ApiError`s, 404/405 and invalid requests to the same body.

`refuse_unknown_query` (an app-wide dependency) refuses a query parameter that the route's
OpenAPI entry does not document (422, naming the accepted ones), so a misspelt option is never
silently ignored, and what is accepted is what is documented. It checks the API's routes (those
in the OpenAPI document); the page, its files and /docs are not the API, and a stray parameter
there (a link's tracking tag) does no harm. Form fields: `songsight.serve.upload.FORM_FIELDS`.
"""

from __future__ import annotations

import logging
import uuid

from songsight.serve.upload import ApiError, missing_extra

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
    from starlette.datastructures import MutableHeaders
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:
    raise missing_extra(exc) from None

log = logging.getLogger("songsight.serve")


def error_response(
    status: int, code: str, message: str, request_id: str, headers=None
) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex[:12]


class Guard:
    """ASGI middleware: a request id and nosniff on every response; any unhandled exception
    becomes a generic JSON 500 here, its traceback logged under that id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s failed", rid, scope.get("path"))
            if not started:
                response = error_response(
                    500, "internal_error", "the server failed; see its log", rid
                )
                await response(scope, receive, send_with_id)


def add_error_handlers(app: FastAPI) -> None:
    """`Guard` and the exception handlers that give every error the API's JSON body."""
    app.add_middleware(Guard)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, request_id(request), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "not found" if exc.status_code == 404 else str(exc.detail)[:200]
        return error_response(exc.status_code, code, message, request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        message = f"invalid {where or 'request'}"
        return error_response(422, "invalid_request", message, request_id(request))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # reached only if `Guard` fails
        message = "the server failed; see its log"
        return error_response(500, "internal_error", message, request_id(request))


def _documented(request: Request, route: APIRoute) -> tuple[list[str], list[str]]:
    """(query parameters, multipart form fields) of this route and method, as documented."""
    paths = request.app.openapi().get("paths", {})  # FastAPI builds it once, then caches it
    operation = paths.get(route.path_format, {}).get(request.method.lower(), {})
    query = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
    content = operation.get("requestBody", {}).get("content", {})
    form = content.get("multipart/form-data", {}).get("schema", {}).get("properties", {})
    return query, list(form)


async def refuse_unknown_query(request: Request) -> None:
    """A FastAPI dependency: 422 naming the accepted parameters when the query has another."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    if not route.include_in_schema:
        return
    accepted, form = _documented(request, route)
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in accepted]
    if not unknown:
        return
    given = ", ".join(repr(name[:40]) for name in unknown[:5])
    where = f"{request.method} {route.path_format}"
    if accepted:
        message = f"unknown query parameter {given}: {where} accepts {', '.join(accepted)}"
    else:
        message = f"unknown query parameter {given}: {where} takes no query parameters"
    if form:
        message += f"; its options are form fields: {', '.join(form)}"
    raise ApiError(422, "invalid_request", message)
