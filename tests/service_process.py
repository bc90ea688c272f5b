"""The service as a real process, for end-to-end tests.

`ServiceRunner` owns one data directory and one pair of ports (API and embedded
store), so every process it starts sees the same ledger, spool and store, and
every URL handed out by one start stays valid for the next. Each start logs to
its own file under the data directory; when the `with` block fails, the tail of
every log is printed, so pytest shows it next to the failure.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.conftest import free_port

SERVICE_BIN = Path(sys.executable).with_name("verified-urls")
EMBEDDED_STORE_MODULE = "service.storage.embedded"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_LINES = 80


def _is_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The command name (in parentheses) may contain spaces: the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children


def wait_until_gone(pid: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while _is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    store_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, as an orchestrator would; the exit code, or None if it had to be killed."""
        if not self.running():
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the service process itself: no shutdown code of its own runs."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServiceRunner:
    """Starts the service on one data directory and fixed ports; cleans up after."""

    workdir: Path
    api_port: int = field(default_factory=free_port)
    store_port: int = field(default_factory=free_port)
    started: list[ServiceProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def store_url(self) -> str:
        """The embedded store's endpoint: every handed-out URL starts with it."""
        return f"http://127.0.0.1:{self.store_port}"

    def environment(self, overrides: Mapping[str, str]) -> dict[str, str]:
        # Settings of the shell running the tests must not leak into the service.
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")}
        env.update(
            {
                "VERIFIED_URLS_DATABASE_URL": f"sqlite:///{self.data_dir / 'ledger.db'}",
                "VERIFIED_URLS_SPOOL_DIR": str(self.data_dir / "spool"),
                "VERIFIED_URLS_EMBEDDED_S3_DATA_DIR": str(self.data_dir / "store"),
                "VERIFIED_URLS_EMBEDDED_S3_PORT": str(self.store_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(overrides)
        return env

    def start(self, env: Mapping[str, str] | None = None, *, worker: bool = True) -> ServiceProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"service-{len(self.started) + 1}.log"
        command = [str(SERVICE_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.api_port)]
        if not worker:
            command.append("--no-worker")
        with log_path.open("wb") as log:
            # Popen on the binary itself (no shell), so the pid is the service's own.
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.environment(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service = ServiceProcess(process, self.base_url, log_path)
        self.started.append(service)
        self._wait_healthy(service)
        service.store_pid = self._find_store_child(service)
        return service

    def _wait_healthy(self, service: ServiceProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not service.running():
                raise RuntimeError(
                    f"the service exited with {service.process.returncode} before it was "
                    f"healthy:\n{service.log_tail()}"
                )
            try:
                if httpx.get(service.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the service was not healthy within {START_TIMEOUT_SECONDS} s")

    @staticmethod
    def _find_store_child(service: ServiceProcess) -> int | None:
        for pid in _children(service.pid):
            if EMBEDDED_STORE_MODULE in _cmdline(pid):
                return pid
        return None

    def close(self) -> None:
        for service in self.started:
            service.stop()
            # A store child outliving its parent would hold the port; end it by its own pid,
            # after checking the pid still names it (pids are reused).
            store = service.store_pid
            if (
                store is not None
                and EMBEDDED_STORE_MODULE in _cmdline(store)
                and not wait_until_gone(store, 5.0)
            ):
                os.kill(store, signal.SIGKILL)

    def log_tails(self) -> str:
        return "\n".join(
            f"----- {s.log_path.name} (pid {s.pid}, store pid {s.store_pid}) -----\n{s.log_tail()}"
            for s in self.started
        )

    def __enter__(self) -> ServiceRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            if exc_type is not None:
                print(self.log_tails())


# ----------------------------------------------------------------- client side


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str) -> tuple[int, int, str, httpx.Headers]:
    """A plain, unsigned GET as a browser would do: (status, size, sha256, headers)."""
    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=60.0) as response:
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
        return response.status_code, size, digest.hexdigest(), response.headers


def wait_settled(client: httpx.Client, object_id: str, timeout_seconds: float) -> dict[str, Any]:
    """The record once it has left `pending`, or the last pending one at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        wait = max(0.0, min(10.0, deadline - time.monotonic()))
        response = client.get(f"/v1/objects/{object_id}", params={"wait": wait})
        if response.status_code == 429:  # the tenant's read limit: as a client should
            time.sleep(float(response.headers["retry-after"]))
            continue
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        if record["state"] != "pending" or time.monotonic() >= deadline:
            return record
