"""`ChaosProxy`: the proxy on its own event loop in a background thread, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from service.chaos.faults import Script, config_for
from service.chaos.proxy import ProxyServer, Upstream

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 10.0

T = TypeVar("T")


class ChaosProxy:
    """A fault-injecting proxy in front of `upstream`, listening on `host:port`.

    `port` 0 picks a free port; `url` says which once started. `rates` overrides
    any rate or setting of `profile` (the names `--set` takes). Usable as a
    context manager; `stop` cancels held answers and closes every connection.
    """

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: str = "none",
        seed: int = 0,
        rates: dict[str, float] | None = None,
        log_path: Path | None = None,
    ) -> None:
        # Checked here so that a bad name fails in the caller's thread, not the proxy's.
        self._config = config_for(profile, rates)
        Upstream.parse(upstream)
        self._upstream = upstream
        self._host = host
        self._wanted_port = port
        self._profile = profile
        self._seed = seed
        self._log_path = log_path
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: ProxyServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://{self._host}:{self._server.port}"

    @property
    def upstream_url(self) -> str:
        """The store behind the proxy, for reading the truth around it."""
        return self._upstream

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError(f"the proxy did not start within {START_TIMEOUT_SECONDS} s")
        if self._failure is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            self._thread = None
            raise self._failure

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join(STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise RuntimeError(f"the proxy did not stop within {STOP_TIMEOUT_SECONDS} s")

    def __enter__(self) -> ChaosProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ in-process control

    def stats(self) -> dict[str, Any]:
        """What `GET /_chaos/stats` answers."""
        server = self._require_server()
        return self._call(server.stats)

    def add_script(self, **fields: Any) -> None:
        """What `POST /_chaos/script` takes, as keyword arguments."""
        script = Script.from_json(fields)
        server = self._require_server()
        self._call(lambda: server.plan.add_script(script))

    def clear_scripts(self) -> None:
        server = self._require_server()
        self._call(server.plan.clear_scripts)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to start(), which raises it in the caller
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        server = ProxyServer(
            self._upstream,
            self._config,
            self._seed,
            profile=self._profile,
            log_path=self._log_path,
        )
        await server.start(self._host, self._wanted_port)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._server = server
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await server.close()

    def _require_server(self) -> ProxyServer:
        if self._server is None or self._thread is None:
            raise RuntimeError("the proxy is not running")
        return self._server

    def _call(self, function: Callable[[], T]) -> T:
        """Runs `function` on the proxy's loop: its state belongs to that thread."""
        assert self._loop is not None

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(CALL_TIMEOUT_SECONDS)
