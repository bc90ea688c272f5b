"""The verification policy: every number of a profile, and what follows from them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.settings import Settings


@dataclass(frozen=True)
class Policy:
    profile: str
    store_retries: int  # retries after the first PUT of a round
    retry_base_seconds: float
    retry_max_seconds: float
    checks: int  # per round; the first right after a PUT that answered OK
    check_window_seconds: float  # from that PUT to the last check
    rounds: int  # the first round plus re-runs
    attempt_timeout_seconds: float  # connect + read timeout of one request
    min_bytes_per_second: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            profile=settings.profile,
            store_retries=settings.STORE_RETRIES,
            retry_base_seconds=settings.RETRY_BASE_SECONDS,
            retry_max_seconds=settings.RETRY_MAX_SECONDS,
            checks=settings.checks,
            check_window_seconds=settings.check_window_seconds,
            rounds=settings.ROUNDS,
            attempt_timeout_seconds=settings.STORE_CONNECT_TIMEOUT_SECONDS
            + settings.STORE_READ_TIMEOUT_SECONDS,
            min_bytes_per_second=settings.STORE_MIN_BYTES_PER_SECOND,
        )

    def max_retry_wait(self, retry: int) -> float:
        """Upper bound of the wait before the `retry`-th retry (from 1): doubling, capped."""
        return float(min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (retry - 1)))

    def retry_wait(self, retry: int, rng: random.Random) -> float:
        """Growing and jittered, so that many objects failing together spread out."""
        return self.max_retry_wait(retry) * (0.5 + rng.random() / 2)

    def check_offset_seconds(self, index: int) -> float:
        """When check number `index` (from 0) is due, in seconds after the OK PUT."""
        if self.checks <= 1:
            return 0.0
        return self.check_window_seconds * index / (self.checks - 1)

    def _retried_request_seconds(self, size: int) -> float:
        """Worst case of one request retried to the limit, with its waits."""
        one = self.attempt_timeout_seconds + size / self.min_bytes_per_second
        waits = sum(self.max_retry_wait(r) for r in range(1, self.store_retries + 1))
        return (self.store_retries + 1) * one + waits

    def round_budget_seconds(self, size: int) -> float:
        """The longest one round can take: the PUT with its retries, then every check
        (a HEAD, and a read-back where the ETag proves nothing, each retried)."""
        per_request = self._retried_request_seconds(size)
        return per_request + self.check_window_seconds + self.checks * 2 * per_request

    def settle_by(self, created_at: datetime, size: int) -> datetime:
        """The latest time the object will have left `pending` while a verifier runs."""
        return created_at + timedelta(seconds=self.rounds * self.round_budget_seconds(size))
