"""The FastAPI app. Engines, clients, stores and the verifier are built in the
lifespan and injected; nothing connects at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service.api import problems
from service.api.routes import router
from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.objects import ObjectsContext
from service.settings import Settings
from service.spool import Spool
from service.storage.base import ObjectStore
from service.storage.s3 import S3Store, make_s3_client
from service.verifier.notify import Settlements
from service.verifier.policy import Policy
from service.verifier.worker import Verifier, VerifierConfig

log = logging.getLogger(__name__)

EMBEDDED_CREDENTIALS = ("testing", "testing")  # moto accepts any; these are its usual
SHUTDOWN_GRACE_SECONDS = 10.0


def _start_embedded_store(settings: Settings, stack: AsyncExitStack) -> None:
    from service.storage.embedded import EmbeddedStoreProcess

    process = EmbeddedStoreProcess(
        host="127.0.0.1",
        port=settings.EMBEDDED_S3_PORT,
        data_dir=settings.EMBEDDED_S3_DATA_DIR,
        bucket=settings.BUCKET,
        region=settings.REGION,
    )
    process.start()
    stack.callback(process.stop)
    log.info(
        "embedded S3 store on %s, objects kept in %s",
        process.endpoint_url,
        settings.EMBEDDED_S3_DATA_DIR,
    )


def _sweep_spool(sessions: sessionmaker[Session], spool: Spool) -> None:
    with sessions() as session:
        referenced = repository.pending_spool_paths(session)
    removed = spool.sweep(referenced)
    if removed:
        log.info("removed %d spool files that no pending object refers to", removed)


def build_store(settings: Settings) -> S3Store:
    access_key, secret_key = settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY
    if settings.embedded_store:
        access_key, secret_key = EMBEDDED_CREDENTIALS
    client = make_s3_client(
        endpoint_url=settings.endpoint_url,
        region=settings.REGION,
        max_pool_connections=settings.WORKER_CONCURRENCY + 8,
        connect_timeout_seconds=settings.STORE_CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds=settings.STORE_READ_TIMEOUT_SECONDS,
        access_key_id=access_key,
        secret_access_key=secret_key,
    )
    return S3Store(client, settings.BUCKET, settings.REGION)


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
            if store is None and settings.embedded_store:
                await asyncio.to_thread(_start_embedded_store, settings, stack)
            object_store = store or build_store(settings)
            if settings.CREATE_BUCKET:
                await asyncio.to_thread(object_store.ensure_bucket)
            engine = make_engine(settings.DATABASE_URL, pool_size=settings.WORKER_CONCURRENCY + 4)
            stack.callback(engine.dispose)
            sessions = make_sessionmaker(engine)
            spool = Spool(
                settings.SPOOL_DIR,
                settings.MULTIPART_PART_BYTES,
                settings.MULTIPART_THRESHOLD_BYTES,
            )
            spool.prepare()
            await asyncio.to_thread(_sweep_spool, sessions, spool)
            executor = ThreadPoolExecutor(
                max_workers=settings.WORKER_CONCURRENCY + 4, thread_name_prefix="verifier"
            )
            stack.callback(executor.shutdown, wait=False, cancel_futures=True)
            settlements = Settlements()
            policy = Policy.from_settings(settings)
            verifier = Verifier(
                sessions,
                object_store,
                policy,
                VerifierConfig(
                    concurrency=settings.WORKER_CONCURRENCY,
                    lease_seconds=settings.LEASE_SECONDS,
                    poll_seconds=settings.WORKER_POLL_SECONDS,
                ),
                settlements,
                executor,
            )
            app.state.objects = ObjectsContext(
                settings=settings,
                sessions=sessions,
                spool=spool,
                policy=policy,
                settlements=settlements,
                wake_verifier=verifier.wake if run_worker else lambda: None,
                bucket=settings.BUCKET,
            )
            app.state.verifier = verifier
            worker_task: asyncio.Task[None] | None = None

            def readiness() -> None:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                object_store.ping()
                if worker_task is not None and worker_task.done():
                    raise RuntimeError("the verifier has stopped")

            app.state.readiness = readiness
            stop = asyncio.Event()
            if run_worker:
                worker_task = asyncio.create_task(verifier.run(stop), name="verifier")
                log.info(
                    "verifier %s running: profile %s, %d checks over %.0f s, %d rounds",
                    verifier.owner,
                    policy.profile,
                    policy.checks,
                    policy.check_window_seconds,
                    policy.rounds,
                )
            try:
                yield
            finally:
                stop.set()
                if worker_task is not None:
                    await _stop_worker(worker_task)

    app = FastAPI(
        title="verified-urls",
        version="1.0.0",
        description="Stores objects in an S3-compatible store and hands out their URLs "
        "only once the store really serves them. Errors are RFC 9457 problem details "
        "with a stable `code`.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    problems.install(app)
    app.include_router(router)
    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    return app


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """Error bodies are `application/problem+json` only (FastAPI would say JSON)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.startswith(("4", "5")) and "application/json" in content:
                    response["content"] = {"application/problem+json": content["application/json"]}
    app.openapi_schema = document
    return document


async def _stop_worker(task: asyncio.Task[Any]) -> None:
    try:
        await asyncio.wait_for(task, timeout=SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("the verifier did not stop in %.0f s; cancelling", SHUTDOWN_GRACE_SECONDS)
    except Exception:
        log.exception("the verifier failed")
