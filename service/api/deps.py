"""Typed dependencies: what routes receive, built in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth import Authenticator, Caller
from service.objects import ObjectsContext
from service.ratelimit import TenantReadLimiter

# documents the scheme in OpenAPI; the header itself is read below, so that a
# malformed one is a 401 rather than "no key"
bearer = HTTPBearer(auto_error=False, description="an API key of your tenant")


def get_context(request: Request) -> ObjectsContext:
    context: ObjectsContext = request.app.state.objects
    return context


async def get_caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    authenticator: Authenticator = request.app.state.authenticator
    authorization = request.headers.get("authorization")
    caller = authenticator.authenticate_without_io(authorization)
    if caller is not None:
        return caller
    return await run_in_threadpool(authenticator.authenticate, authorization)


async def get_reader(request: Request, caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """The caller of a status read, charged against its tenant's read limit."""
    limiter: TenantReadLimiter = request.app.state.read_limiter
    limiter.take(caller.tenant)
    return caller


ContextDep = Annotated[ObjectsContext, Depends(get_context)]
CallerDep = Annotated[Caller, Depends(get_caller)]
ReaderDep = Annotated[Caller, Depends(get_reader)]
