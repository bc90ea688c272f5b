"""Every error leaves as RFC 9457 problem details with a stable `code`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from service.errors import ServiceError, invalid_name, invalid_request

log = logging.getLogger(__name__)

CODES_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
}


def problem_response(error: ServiceError, request: Request) -> JSONResponse:
    return JSONResponse(
        error.problem(instance=request.url.path),
        status_code=error.status,
        headers=error.headers,
        media_type="application/problem+json",
    )


def _validation_error(exc: RequestValidationError) -> ServiceError:
    parts = []
    for item in exc.errors():
        location = ".".join(str(part) for part in item.get("loc", ()))
        if tuple(item.get("loc", ())) == ("query", "name"):
            return invalid_name("the name is missing")
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return invalid_request("; ".join(parts) or "invalid request", status=422)


def allowed_methods(request: Request, routes: Sequence[BaseRoute]) -> str:
    """Every method some route of this path takes. Starlette's own 405 names only
    the first route that matched the path, while a path may have several
    (GET and DELETE /v1/objects/{id})."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods.update(route_methods)
    return ", ".join(sorted(methods))


def install(app: FastAPI, routes: Sequence[BaseRoute] = ()) -> None:
    """`routes`: those of included routers (FastAPI keeps them out of
    `app.router.routes`), for the `Allow` header of a 405."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(_validation_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, [*app.router.routes, *routes])
        error = ServiceError(exc.status_code, code, detail, headers)
        return problem_response(error, request)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return problem_response(invalid_request("the client went away mid-body"), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        error = ServiceError(500, "internal_error", "an unexpected error; it has been logged")
        return problem_response(error, request)
