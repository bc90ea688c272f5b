"""Who is calling: API keys per tenant, sent as `Authorization: Bearer <key>`.

Keys live hashed in the ledger (`verified-urls keys create --tenant NAME` prints
one once) or are preset with `VERIFIED_URLS_API_KEYS=tenant:key,...`. With no
key configured at all, the service runs open, as the default tenant, for local
use only. Each tenant's objects live under its own key prefix in the bucket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from service.errors import ServiceError
from service.ledger import api_keys
from service.ledger.models import ApiKeyRow

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KEY_PREFIX_CHARS = 10
OPEN_CHECK_SECONDS = 2.0  # how stale "are there any keys?" may be


@dataclass(frozen=True)
class Caller:
    tenant: str

    @property
    def key_prefix(self) -> str:
        """Where the tenant's objects live in the bucket."""
        return "" if self.tenant == DEFAULT_TENANT else f"{self.tenant}/"


def hash_key(key: str) -> str:
    # keys are 256-bit random tokens: a fast hash is enough, no stretching needed
    return hashlib.sha256(key.encode()).hexdigest()


def tenant_problem(tenant: str) -> str | None:
    if TENANT_NAME.match(tenant) is None:
        return "a tenant name is 1-64 of a-z 0-9 _ -, starting with a letter or digit"
    return None


def parse_preset_keys(text: str | None) -> dict[str, str]:
    """`tenant:key,tenant2:key2` -> {hash(key): tenant}. Raises ValueError."""
    preset: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        tenant, sep, key = item.strip().partition(":")
        if not sep or not key or tenant_problem(tenant):
            raise ValueError(f"API_KEYS item {tenant!r}... is not tenant:key with a valid tenant")
        preset[hash_key(key)] = tenant
    return preset


def unauthorized(detail: str) -> ServiceError:
    return ServiceError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], preset: dict[str, str]) -> None:
        self._sessions = sessions
        self._preset = preset
        self._open_checked_at = float("-inf")
        self._open = False

    def is_open(self) -> bool:
        """True while no key has ever been configured (preset or in the ledger).
        A revoked key still counts: revoking the last key must not open the API."""
        if self._preset:
            return False
        now = time.monotonic()
        if now - self._open_checked_at > OPEN_CHECK_SECONDS:
            with self._sessions() as session:
                self._open = api_keys.count_all(session) == 0
            self._open_checked_at = now
        return self._open

    def authenticate_without_io(self, authorization: str | None) -> Caller | None:
        """The caller when that needs no ledger read (open mode known fresh, or a
        preset key), so the request skips a thread hop; None: call `authenticate`."""
        if not authorization:
            fresh = time.monotonic() - self._open_checked_at <= OPEN_CHECK_SECONDS
            if not self._preset and fresh and self._open:
                return Caller(DEFAULT_TENANT)
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        tenant = self._preset.get(hash_key(key.strip()))
        return Caller(tenant) if tenant is not None else None

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request; raises 401 `unauthorized` (blocking: run in a thread)."""
        if not authorization:
            if self.is_open():
                return Caller(DEFAULT_TENANT)
            raise unauthorized("send an API key as `Authorization: Bearer <key>`")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("the Authorization header must be `Bearer <key>`")
        key_hash = hash_key(key.strip())
        tenant = self._preset.get(key_hash)
        if tenant is None:
            with self._sessions() as session:
                tenant = api_keys.tenant_of(session, key_hash)
        if tenant is None:
            raise unauthorized("the API key is unknown or revoked")
        return Caller(tenant)


def create_key(sessions: sessionmaker[Session], tenant: str) -> tuple[ApiKeyRow, str]:
    """A new key for `tenant`: the row, and the key itself (shown once, never stored)."""
    problem = tenant_problem(tenant)
    if problem is not None:
        raise ValueError(problem)
    key = "vu_" + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=uuid.uuid4().hex,
        tenant=tenant,
        key_hash=hash_key(key),
        key_prefix=key[:KEY_PREFIX_CHARS],
        created_at=datetime.now(UTC),
    )
    with sessions.begin() as session:
        api_keys.add(session, row)
    return row, key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
