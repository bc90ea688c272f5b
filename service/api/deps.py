"""Typed dependencies: what routes receive, built in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.objects import ObjectsContext


def get_context(request: Request) -> ObjectsContext:
    context: ObjectsContext = request.app.state.objects
    return context


ContextDep = Annotated[ObjectsContext, Depends(get_context)]
