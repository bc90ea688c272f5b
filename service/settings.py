"""All settings, read from `VERIFIED_URLS_*` environment variables.

Every number carries its unit in its name. An explicit value overrides the
verification profile's default; nonsense fails at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIB = 1024**2

Profile = Literal["strong", "eventual"]

# checks per round and the span they cover, per profile
PROFILE_CHECKS: dict[str, tuple[int, float]] = {
    "strong": (1, 0.0),
    "eventual": (11, 120.0),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VERIFIED_URLS_", extra="ignore")

    DATABASE_URL: str = "sqlite:///./data/ledger.db"
    S3_ENDPOINT_URL: str | None = None
    EMBEDDED_S3_PORT: int = Field(9000, ge=1, le=65535)
    EMBEDDED_S3_DATA_DIR: Path = Path("./data/store")
    BUCKET: str = "verified-urls"
    REGION: str = "us-east-1"
    CREATE_BUCKET: bool = True
    PUBLIC_BASE_URL: str | None = None
    SPOOL_DIR: Path = Path("./data/spool")
    SPOOL_MAX_BYTES: int = Field(10 * GIB, ge=0)
    MAX_OBJECT_BYTES: int = Field(5 * GIB, ge=0)
    MULTIPART_THRESHOLD_BYTES: int = Field(64 * MIB, ge=5 * MIB)
    MULTIPART_PART_BYTES: int = Field(16 * MIB, ge=5 * MIB)
    PROFILE: Profile | None = None
    STORE_RETRIES: int = Field(6, ge=0, le=100)
    RETRY_BASE_SECONDS: float = Field(0.5, ge=0)
    RETRY_MAX_SECONDS: float = Field(30.0, ge=0)
    CHECKS: int | None = Field(None, ge=1, le=1000)
    CHECK_WINDOW_SECONDS: float | None = Field(None, ge=0)
    ROUNDS: int = Field(7, ge=1, le=100)
    MAX_WAIT_SECONDS: float = Field(30.0, ge=0, le=3600)
    LEASE_SECONDS: float = Field(30.0, gt=0)
    WORKER_CONCURRENCY: int = Field(16, ge=1, le=512)
    WORKER_POLL_SECONDS: float = Field(1.0, gt=0)
    STORE_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0)
    STORE_READ_TIMEOUT_SECONDS: float = Field(30.0, gt=0)
    # slowest store throughput the deadline (`settle_by`) allows for, per PUT
    STORE_MIN_BYTES_PER_SECOND: int = Field(1 * MIB, gt=0)
    # preset API keys, `tenant:key,tenant2:key2`; with none here or in the ledger
    # the service runs open (loopback only) as the default tenant
    API_KEYS: str | None = None
    # status reads per tenant and API process (0: no limit), and the burst allowed
    TENANT_READS_PER_SECOND: float = Field(50.0, ge=0)
    TENANT_READ_BURST: int = Field(100, ge=1)
    # browser origins allowed to call the API, comma-separated (`*` for any)
    CORS_ALLOWED_ORIGINS: str = ""
    # webhooks: callback URLs on private, loopback or link-local addresses are
    # refused unless allowed (for tests and closed networks)
    WEBHOOK_ALLOW_PRIVATE_NETWORKS: bool = False
    # per POST; at most half of LEASE_SECONDS, so a delivery's lease outlasts its POST
    WEBHOOK_TIMEOUT_SECONDS: float = Field(10.0, gt=0)
    WEBHOOK_RETRY_BASE_SECONDS: float = Field(5.0, ge=0)
    WEBHOOK_RETRY_MAX_SECONDS: float = Field(3600.0, ge=0)
    WEBHOOK_RETRY_FOR_SECONDS: float = Field(86400.0, ge=0)  # then a delivery fails
    WEBHOOK_CONCURRENCY: int = Field(8, ge=1, le=256)
    # how long the previous secret keeps signing after a rotation
    WEBHOOK_SECRET_OVERLAP_SECONDS: float = Field(86400.0, ge=0)
    AWS_ACCESS_KEY_ID: str | None = None
    AWS_SECRET_ACCESS_KEY: str | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.CHECKS is not None and self.CHECKS > 1 and self.CHECK_WINDOW_SECONDS == 0:
            raise ValueError("CHECKS > 1 needs CHECK_WINDOW_SECONDS > 0")
        if self.MULTIPART_PART_BYTES > self.MULTIPART_THRESHOLD_BYTES:
            raise ValueError("MULTIPART_PART_BYTES must not exceed MULTIPART_THRESHOLD_BYTES")
        from service.auth import parse_preset_keys

        parse_preset_keys(self.API_KEYS)
        if self.SPOOL_MAX_BYTES < self.MAX_OBJECT_BYTES:
            raise ValueError("SPOOL_MAX_BYTES must be at least MAX_OBJECT_BYTES")
        if self.MAX_OBJECT_BYTES > 10_000 * self.MULTIPART_PART_BYTES:
            raise ValueError(
                "MAX_OBJECT_BYTES needs more than 10,000 parts of MULTIPART_PART_BYTES"
            )
        return self

    @property
    def cors_allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.CORS_ALLOWED_ORIGINS.split(",") if origin.strip()]

    @property
    def webhook_timeout_seconds(self) -> float:
        return min(self.WEBHOOK_TIMEOUT_SECONDS, self.LEASE_SECONDS / 2)

    @property
    def embedded_store(self) -> bool:
        return self.S3_ENDPOINT_URL is None

    @property
    def endpoint_url(self) -> str:
        if self.S3_ENDPOINT_URL is not None:
            return self.S3_ENDPOINT_URL.rstrip("/")
        return f"http://127.0.0.1:{self.EMBEDDED_S3_PORT}"

    @property
    def profile(self) -> str:
        if self.PROFILE is not None:
            return self.PROFILE
        return "strong" if self.embedded_store else "eventual"

    @property
    def checks(self) -> int:
        return self.CHECKS if self.CHECKS is not None else PROFILE_CHECKS[self.profile][0]

    @property
    def check_window_seconds(self) -> float:
        if self.CHECK_WINDOW_SECONDS is not None:
            return self.CHECK_WINDOW_SECONDS
        return PROFILE_CHECKS[self.profile][1]

    @property
    def public_base_url(self) -> str:
        if self.PUBLIC_BASE_URL is not None:
            return self.PUBLIC_BASE_URL.rstrip("/")
        return f"{self.endpoint_url}/{self.BUCKET}"
