"""The parts a process runs on, built once at start-up and torn down at exit:
the store (and the embedded store process), the ledger's engine, the spool,
the verifier, and the cross-process wake-ups. `serve` (the app's lifespan)
and `worker` both use it; nothing connects at import time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.notify import Listener
from service.settings import Settings
from service.spool import Spool
from service.storage.base import ObjectStore
from service.storage.s3 import S3Store, make_s3_client
from service.verifier.notify import Settlements
from service.verifier.policy import Policy
from service.verifier.worker import Verifier, VerifierConfig, make_owner_name
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.outbox import Outbox

log = logging.getLogger(__name__)

EMBEDDED_CREDENTIALS = ("testing", "testing")  # moto accepts any; these are its usual
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class Runtime:
    settings: Settings
    store: ObjectStore
    engine: Engine
    sessions: sessionmaker[Session]
    spool: Spool
    policy: Policy
    settlements: Settlements
    verifier: Verifier
    dispatcher: Dispatcher
    outbox: Outbox
    # sent with this runtime's work notifications; its own listener skips them
    origin: str = field(default_factory=lambda: uuid.uuid4().hex)

    def check_ready(self) -> None:
        """Raises unless the ledger and the store answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        self.store.ping()


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


async def build_runtime(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    store: ObjectStore | None = None,
    embedded_store: bool = True,
) -> Runtime:
    """Builds every part; `stack` tears them down in reverse order."""
    if store is None and settings.embedded_store and embedded_store:
        await asyncio.to_thread(_start_embedded_store, settings, stack)
    object_store = store or build_store(settings)
    if settings.CREATE_BUCKET:
        await asyncio.to_thread(object_store.ensure_bucket)
    engine = make_engine(settings.DATABASE_URL, pool_size=settings.WORKER_CONCURRENCY + 4)
    stack.callback(engine.dispose)
    sessions = make_sessionmaker(engine)
    spool = Spool(
        settings.SPOOL_DIR, settings.MULTIPART_PART_BYTES, settings.MULTIPART_THRESHOLD_BYTES
    )
    spool.prepare()
    await asyncio.to_thread(_sweep_spool, sessions, spool)
    executor = ThreadPoolExecutor(
        max_workers=settings.WORKER_CONCURRENCY + 4, thread_name_prefix="verifier"
    )
    stack.callback(executor.shutdown, wait=False, cancel_futures=True)
    settlements = Settlements()
    policy = Policy.from_settings(settings)
    owner = make_owner_name()
    outbox = Outbox(settings)
    dispatcher = Dispatcher(
        sessions,
        settings,
        executor,
        owner,
        poll_seconds=settings.WORKER_POLL_SECONDS,
    )
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
        owner=owner,
        outbox=outbox,
        on_event_queued=dispatcher.wake,
    )
    runtime = Runtime(
        settings,
        object_store,
        engine,
        sessions,
        spool,
        policy,
        settlements,
        verifier,
        dispatcher,
        outbox,
    )
    _listen_for_wake_ups(runtime, stack)
    return runtime


def _listen_for_wake_ups(runtime: Runtime, stack: AsyncExitStack) -> None:
    if not Listener.applies_to(runtime.settings.DATABASE_URL):
        return
    loop = asyncio.get_running_loop()
    listener = Listener(
        runtime.settings.DATABASE_URL,
        on_work=lambda: loop.call_soon_threadsafe(runtime.verifier.wake),
        on_settled=lambda object_id: loop.call_soon_threadsafe(
            runtime.settlements.notify, object_id
        ),
        on_deliveries=lambda: loop.call_soon_threadsafe(runtime.dispatcher.wake),
        origin=runtime.origin,
    )
    listener.start()
    stack.callback(listener.stop)


async def _verify_and_dispatch(runtime: Runtime, stop: asyncio.Event) -> None:
    await asyncio.gather(runtime.verifier.run(stop), runtime.dispatcher.run(stop))


async def run_verifier(runtime: Runtime, stop: asyncio.Event) -> asyncio.Task[None]:
    """The verifier and the webhook dispatcher, as one task."""
    policy = runtime.policy
    task = asyncio.create_task(_verify_and_dispatch(runtime, stop), name="verifier")
    log.info(
        "verifier %s running: profile %s, %d checks over %.0f s, %d rounds",
        runtime.verifier.owner,
        policy.profile,
        policy.checks,
        policy.check_window_seconds,
        policy.rounds,
    )
    return task


async def stop_verifier(task: asyncio.Task[Any]) -> None:
    try:
        await asyncio.wait_for(task, timeout=SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("the verifier did not stop in %.0f s; cancelling", SHUTDOWN_GRACE_SECONDS)
    except Exception:
        log.exception("the verifier failed")
