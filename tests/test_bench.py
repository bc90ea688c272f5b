"""The benchmark scripts start and run, with tiny sizes (the figures mean
nothing here; `bench/*.py` with their defaults make them)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
TIMEOUT_SECONDS = 120
TINY = {
    "throughput.py": [
        "--small-objects",
        "3",
        "--large-objects",
        "1",
        "--large-bytes",
        "300000",
        "--concurrency",
        "2",
    ],
    "time_to_url.py": ["--samples", "3", "--warmup", "1", "--object-bytes", "1000"],
    "requests_per_object.py": [
        "--objects",
        "2",
        "--multipart-objects",
        "0",
        "--profiles",
        "strong",
    ],
    "memory.py": ["--object-bytes", "3000000"],
}


def test_each_bench_runs_with_tiny_sizes() -> None:
    """All at once (each has its own moto and service on free ports), SQLite ledgers."""
    running = {
        name: subprocess.Popen(
            [sys.executable, str(BENCH / name), "--ledger", "sqlite", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in TINY.items()
    }
    outputs = {}
    for name, process in running.items():
        try:
            outputs[name] = process.communicate(timeout=TIMEOUT_SECONDS)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            outputs[name] = process.communicate()[0]
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{outputs[name]}"
    assert "ratio" in outputs["throughput.py"]
    assert "target: service/direct" in outputs["throughput.py"]
    assert "target: time to URL" in outputs["time_to_url.py"]
    assert "target: <= 2 store requests" in outputs["requests_per_object.py"]
    assert "target: a 3000000 B upload adds <= 64 MiB RSS" in outputs["memory.py"]
    for output in outputs.values():
        assert "CPU" in output
