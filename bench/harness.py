"""What every bench shares: starting moto's server, the chaos proxy and the
service on free loopback ports (and stopping each by its own process id),
throwaway PostgreSQL ledgers, and reading a process's CPU and memory from /proc.

Not a bench itself; the scripts beside it import it (`import harness`), which
works because Python puts a script's own folder first on `sys.path`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"
MIB = 1024**2
BENCH_TENANT = "bench"  # the tenant of `--api-key` in the benches that start their service


class Timeout(Exception):
    pass


def install_alarm(seconds: int) -> None:
    """Bounds the whole run: SIGALRM raises Timeout in the main thread."""

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Timeout(f"the run took longer than {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def base_env() -> dict[str, str]:
    """This environment without any VERIFIED_URLS_ setting, with moto's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")}
    return {**env, **CREDENTIALS}


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process a bench starts; `stop_all` ends each by its own id."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], log_name: str, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.work / log_name).open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=self.work,
                env={**self.env, **(extra or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout_seconds: float = 20) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process in self.running:
            self.running.remove(process)
        return int(process.returncode)

    def stop_all(self) -> None:
        """SIGTERM to all (last started first), then wait for each."""
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in list(self.running):
            try:
                self.stop(process)
            except Exception as exc:
                print(f"could not stop {process.args!r}: {exc}", file=sys.stderr)

    def print_logs(self, lines: int = 15) -> None:
        for log in sorted(self.work.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last lines of {log}", *tail, sep="\n", file=sys.stderr)


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise Timeout(f"{url} did not answer within {timeout_seconds} s")


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def start_moto(processes: Processes, log_name: str = "moto.log") -> Started:
    port = free_port()
    command = [str(BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = processes.start(command, log_name)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/moto-api/", process)
    return Started(process, url)


def start_proxy(
    processes: Processes,
    upstream: str,
    *,
    profile: str = "none",
    seed: int | None = None,
    log: Path | None = None,
    settings: Iterable[str] = (),
    log_name: str = "proxy.log",
) -> Started:
    """`verified-urls chaos-proxy` in front of `upstream`; `settings` are NAME=VALUE."""
    port = free_port()
    command = [
        str(BIN / "verified-urls"),
        "chaos-proxy",
        "--upstream",
        upstream,
        "--listen",
        f"127.0.0.1:{port}",
        "--profile",
        profile,
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    if log is not None:
        command += ["--log", str(log)]
    for item in settings:
        command += ["--set", item]
    process = processes.start(command, log_name)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/_chaos/stats", process)
    return Started(process, url)


def start_store(processes: Processes, latency_seconds: float = 0.0) -> tuple[Started, Started]:
    """moto's server, and what both sides of a comparison talk to: moto itself, or
    with `latency_seconds` > 0 the chaos proxy (profile none) adding that to every
    request, as a store across a network would. Returns (moto, endpoint)."""
    moto = start_moto(processes)
    if latency_seconds <= 0:
        return moto, moto
    proxy = start_proxy(processes, moto.url, settings=[f"latency_seconds={latency_seconds}"])
    return moto, proxy


def service_env(
    *,
    database_url: str,
    endpoint_url: str,
    bucket: str,
    spool_dir: Path,
    profile: str = "strong",
    api_key: str | None = None,
    **extra: object,
) -> dict[str, str]:
    """The service's settings for a bench; `extra` names are without the prefix.
    With `api_key`, the service knows it (preset) as tenant BENCH_TENANT's."""
    env = {
        "VERIFIED_URLS_DATABASE_URL": database_url,
        "VERIFIED_URLS_S3_ENDPOINT_URL": endpoint_url,
        "VERIFIED_URLS_BUCKET": bucket,
        "VERIFIED_URLS_SPOOL_DIR": str(spool_dir),
        "VERIFIED_URLS_PROFILE": profile,
        "VERIFIED_URLS_AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "VERIFIED_URLS_AWS_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    if api_key is not None:
        env["VERIFIED_URLS_API_KEYS"] = f"{BENCH_TENANT}:{api_key}"
    env.update({f"VERIFIED_URLS_{name}": str(value) for name, value in extra.items()})
    return env


def key_prefix(api_key: str | None) -> str:
    """Where the service puts a bench's objects in the bucket: its tenant's prefix."""
    return f"{BENCH_TENANT}/" if api_key is not None else ""


def start_service(
    processes: Processes,
    env: dict[str, str],
    *,
    worker: bool = True,
    log_name: str = "service.log",
    log_level: str = "warning",
) -> Started:
    """`verified-urls serve` on a free port, answering /healthz."""
    port = free_port()
    command = [
        str(BIN / "verified-urls"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if not worker:
        command.append("--no-worker")
    process = processes.start(command, log_name, env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", process)
    return Started(process, url)


def s3_client(endpoint_url: str, max_pool_connections: int = 10) -> Any:
    """A boto3 client set up as the service sets up its own (retries off, path style,
    Content-MD5 rather than trailing checksums), so a direct client does the same work."""
    from service.storage.s3 import make_s3_client

    return make_s3_client(
        endpoint_url=endpoint_url,
        region=REGION,
        max_pool_connections=max_pool_connections,
        connect_timeout_seconds=5,
        read_timeout_seconds=60,
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def allow_anonymous_get(client: Any, bucket: str) -> None:
    """A bucket policy allowing anonymous s3:GetObject, so handed-out URLs work."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def unique_bucket(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- /proc


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks over all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def rss_bytes(pid: int) -> int:
    """Resident set size now (from /proc/PID/statm, cheap enough to sample often)."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE_BYTES


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of the RSS (VmHWM), since start or the last reset."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`); False if
    the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class CpuMeter:
    """CPU seconds of named processes between `start` and `stop`. The name
    `client` is this process (every thread of it)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self._before: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.seconds = {
            name: process_cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()
        }
        return self.seconds


def postgres_backend_cpu(database_url: str) -> dict[int, float]:
    """CPU seconds so far of every server process connected to the ledger's database
    (PostgreSQL only, and only on this machine)."""
    with psycopg.connect(plain_pg_url(database_url), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    return {int(pid): process_cpu_seconds(int(pid)) for (pid,) in rows}


def postgres_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# ---------------------------------------------------------------- ledgers


def pg_url(database: str, driver: str = "postgresql") -> str:
    return f"{driver}://postgres@127.0.0.1:5432/{database}"


def plain_pg_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def admin(statement: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(statement.encode())


@contextmanager
def throwaway_databases(prefix: str, labels: list[str]) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases, migrated by the real migrations; dropped after."""
    from service.ledger.database import migrate

    names = [f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:6]}_{label}" for label in labels]
    try:
        for name in names:
            admin(f'CREATE DATABASE "{name}"')
            migrate(pg_url(name, "postgresql+psycopg"))
        yield names
    finally:
        for name in names:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(prefix: str, tag: str) -> Iterator[str]:
    with throwaway_databases(prefix, [tag]) as names:
        yield names[0]


@contextmanager
def ledger(kind: str, work: Path, tag: str) -> Iterator[str]:
    """A fresh ledger's SQLAlchemy URL: `postgresql` (a throwaway database on
    127.0.0.1:5432) or `sqlite` (a file in `work`, migrated by the service)."""
    if kind == "sqlite":
        yield f"sqlite:///{work / f'{tag}.db'}"
        return
    with throwaway_database("bench_", tag) as name:
        yield pg_url(name, "postgresql+psycopg")


def ledger_rows(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the ledger (PostgreSQL or SQLite)."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            return list(connection.execute(sql.replace("%s", "?"), params).fetchall())
    with psycopg.connect(plain_pg_url(database_url), autocommit=True) as connection:
        return [tuple(row) for row in connection.execute(sql.encode(), params).fetchall()]


# ---------------------------------------------------------------- figures


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine_lines() -> list[str]:
    load = os.getloadavg()
    return [
        f"date            {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"machine         nproc {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start, Python {sys.version.split()[0]}",
    ]


def pools_line(worker_concurrency: int) -> str:
    """The service's pools as `service.runtime` sizes them from WORKER_CONCURRENCY."""
    return (
        f"pools           service: boto3 {worker_concurrency + 8} connections, ledger "
        f"{worker_concurrency + 4} (+{worker_concurrency + 4} overflow), verifier threads "
        f"{worker_concurrency + 4}, request threads 40 (anyio's default)"
    )


def size_label(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"
