"""`verified-urls worker`: the verifier alone, no HTTP.

SIGTERM (or SIGINT) stops claiming, lets the steps in flight finish within a
bounded time, hands back the leases still held, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from service.runtime import build_runtime, run_verifier, stop_verifier
from service.settings import Settings

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> int:
    if settings.embedded_store:
        log.error(
            "a worker needs VERIFIED_URLS_S3_ENDPOINT_URL: the embedded store lives inside "
            "`serve` (point it at http://127.0.0.1:%d to share that one)",
            settings.EMBEDDED_S3_PORT,
        )
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        runtime = await build_runtime(settings, stack)
        task = await run_verifier(runtime, stop)
        await asyncio.wait(
            [task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        stop.set()
        await stop_verifier(task)
        if task.done() and not task.cancelled() and task.exception() is not None:
            return 1
    log.info("worker stopped")
    return 0
