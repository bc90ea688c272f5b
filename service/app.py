"""The FastAPI app. Its parts are built in the lifespan (service.runtime) and
injected; nothing connects at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import problems
from service.api.openapi import openapi_document
from service.api.routes import router
from service.auth import Authenticator, parse_preset_keys
from service.objects import ObjectsContext
from service.ratelimit import TenantReadLimiter
from service.runtime import build_runtime, run_verifier, stop_verifier
from service.settings import Settings
from service.storage.base import ObjectStore

log = logging.getLogger(__name__)

OPEN_WARNING = (
    "\n" + "!" * 72 + "\n"
    "!! NO API KEY IS CONFIGURED: the API is OPEN to anyone who can reach it,\n"
    "!! as the default tenant. Fine on loopback for local use; anywhere else,\n"
    "!! create a key (`verified-urls keys create --tenant NAME`) or set\n"
    "!! VERIFIED_URLS_API_KEYS=tenant:key.\n" + "!" * 72
)


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    run_worker: bool = True,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            runtime = await build_runtime(settings, stack, store=store)
            app.state.objects = ObjectsContext(
                settings=settings,
                sessions=runtime.sessions,
                spool=runtime.spool,
                policy=runtime.policy,
                settlements=runtime.settlements,
                wake_verifier=runtime.verifier.wake if run_worker else lambda: None,
                bucket=settings.BUCKET,
                wake_dispatcher=runtime.dispatcher.wake if run_worker else lambda: None,
                origin=runtime.origin,
            )
            app.state.verifier = runtime.verifier
            app.state.authenticator = Authenticator(
                runtime.sessions, parse_preset_keys(settings.API_KEYS)
            )
            app.state.read_limiter = TenantReadLimiter(
                settings.TENANT_READS_PER_SECOND, settings.TENANT_READ_BURST
            )
            if await asyncio.to_thread(app.state.authenticator.is_open):
                log.warning(OPEN_WARNING)
            stop = asyncio.Event()
            worker_task = await run_verifier(runtime, stop) if run_worker else None

            def readiness() -> None:
                runtime.check_ready()
                if worker_task is not None and worker_task.done():
                    raise RuntimeError("the verifier has stopped")

            app.state.readiness = readiness
            try:
                yield
            finally:
                stop.set()
                if worker_task is not None:
                    await stop_verifier(worker_task)

    app = FastAPI(
        title="verified-urls",
        version="1.0.0",
        description="Stores objects in an S3-compatible store and hands out their URLs "
        "only once the store really serves them. Errors are RFC 9457 problem details "
        "with a stable `code`.",
        lifespan=lifespan,
        redirect_slashes=False,
        openapi_tags=[
            {"name": "objects", "description": "Upload objects, follow them, delete them"},
            {"name": "webhooks", "description": "Events sent to callback URLs, and replays"},
            {"name": "service", "description": "Liveness and readiness of the service"},
        ],
    )
    problems.install(app, router.routes)
    app.include_router(router)
    if settings.cors_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-MD5",
                "Content-Digest",
                "Idempotency-Key",
                "If-None-Match",
            ],
            # what scripts in the browser must read to follow the protocol
            expose_headers=["Location", "Retry-After", "ETag", "Idempotent-Replayed"],
            max_age=600,
        )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app
