"""Status reads per tenant, so that a client polling in a tight loop cannot slow
the service down for everyone else.

A token bucket per tenant in each API process: `TENANT_READS_PER_SECOND`
sustained, bursts up to `TENANT_READ_BURST`. A read past it is 429
`rate_limited` with `Retry-After`; a long-poll (`wait`) is one read however long
it waits, which is why clients should wait rather than poll.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from service.errors import ServiceError


def rate_limited(retry_after_seconds: float) -> ServiceError:
    seconds = max(1, math.ceil(retry_after_seconds))
    return ServiceError(
        429,
        "rate_limited",
        "too many status reads for this tenant; use `wait` to long-poll instead of "
        "polling in a loop",
        {"Retry-After": str(seconds)},
    )


class TenantReadLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`per_second` 0 switches the limit off."""
        self._per_second = per_second
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, tenant: str) -> None:
        """One read of `tenant`; raises 429 `rate_limited` past the limit."""
        if self._per_second <= 0:
            return
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(tenant, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._per_second)
            if tokens < 1:
                self._buckets[tenant] = (tokens, now)
                raise rate_limited((1 - tokens) / self._per_second)
            self._buckets[tenant] = (tokens - 1, now)
