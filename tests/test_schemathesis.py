"""schemathesis over the whole API, against the real service process.

The committed contract (openapi.yaml, which tests/test_openapi.py keeps equal
to the app's) drives it: every operation gets its schema's examples, the
coverage phase's edge cases and at least MAX_EXAMPLES generated cases, valid
and invalid (mode "all"), each with a valid API key; then the state machine
follows the document's links (upload -> read/delete, list -> read/delete/next
page, read -> delete, delete -> read). Every check schemathesis has is on but
one: no 5xx; status codes, content types, headers and bodies as documented;
invalid data refused and valid data accepted; no answer without the key;
`Allow` on 405. Off: use_after_free, as a deleted object's record stays
readable (state `deleted`, no URL) by design.

The service runs with MAX_WAIT_SECONDS=1, so a generated `wait` costs at most
a second, and with the per-tenant read limit off: the limit's 429 is a
documented answer, but a run of hundreds of reads would spend its time
there (tests/test_ratelimit.py covers it).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import hypothesis
import pytest
import schemathesis
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.transport.serialization import serialize_binary

from service.naming import MAX_KEY_BYTES
from tests.conftest import free_port
from tests.service_process import ServiceRunner
from tests.webhook_receiver import Receiver

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi.yaml"
TENANT = "schemathesis"
API_KEY = "schemathesis-secret-key-0123456789"
RECEIVER = Receiver(free_port())
RECEIVER_URL = RECEIVER.url
MAX_EXAMPLES = 200  # per operation, in the fuzzing phase (examples and coverage come on top)
STATEFUL_SCENARIOS = 300
STATEFUL_STEPS = 10
STATEFUL_RESTARTS = 50

# ------------------------------------------------ what a schema cannot say
#
# Some valid requests depend on things JSON Schema cannot express; where a
# generated request is meant to be valid (its part generated in positive
# mode), these make it so, as a real client's would be. Invalid requests are
# left as generated.


def _is_positive(case: schemathesis.Case, location: ParameterLocation) -> bool:
    return case.meta is None or not case.meta.is_negative_at(location)


def _object_bytes(case: schemathesis.Case) -> bytes | None:
    """The bytes the service will store, as schemathesis will send them."""
    body = case.body
    if isinstance(body, dict):  # multipart/form-data: the object is the `file` field
        body = body.get("file")
    return None if body is None or isinstance(body, NotSet) else serialize_binary(body)


def _valid_upload(case: schemathesis.Case) -> None:
    """Digests are the body's (a random Content-MD5 is a wrong one); an
    Idempotency-Key is new (another upload's key is 422 by design); a name is
    free and fits, with the tenant's key prefix, in 1024 bytes of UTF-8 (the
    document's maxLength counts characters)."""
    if _is_positive(case, ParameterLocation.HEADER) and case.headers:
        data = _object_bytes(case)
        headers = {name.lower(): name for name in case.headers}
        if data is not None and "content-md5" in headers:
            case.headers[headers["content-md5"]] = base64.b64encode(
                hashlib.md5(data).digest()
            ).decode()
        if data is not None and "content-digest" in headers:
            sha256 = base64.b64encode(hashlib.sha256(data).digest()).decode()
            case.headers[headers["content-digest"]] = f"sha-256=:{sha256}:"
        if "idempotency-key" in headers:
            key = case.headers[headers["idempotency-key"]]
            case.headers[headers["idempotency-key"]] = f"{uuid.uuid4()}-{key[:200].rstrip()}"
    name = case.query.get("name") if case.query else None
    if _is_positive(case, ParameterLocation.QUERY) and isinstance(name, str):
        # a name that no earlier upload holds (a taken one is 409 by design;
        # Hypothesis would draw "0" again and again, and never get past it)
        name = f"{uuid.uuid4().hex[:12]}/{name}"
        room = MAX_KEY_BYTES - len(f"{TENANT}/")  # the store key is the tenant's prefix + name
        if len(name.encode()) > room:
            # a prefix of a valid name, plus a character that completes its last segment
            name = name.encode()[: room - 1].decode(errors="ignore") + "x"
        case.query["name"] = name
    callback_url = case.query.get("callback_url") if case.query else None
    if _is_positive(case, ParameterLocation.QUERY) and isinstance(callback_url, str):
        # whether a URL's host is a private address, no schema says: the test's receiver
        case.query["callback_url"] = RECEIVER_URL


def _valid_listing(case: schemathesis.Case) -> None:
    """A cursor is opaque: only one the service gave out is valid (the
    document's NextPage link passes those along in the stateful run)."""
    if _is_positive(case, ParameterLocation.QUERY) and case.query:
        case.query.pop("cursor", None)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    if case.operation.label == "POST /v1/objects":
        _valid_upload(case)
    elif case.operation.label == "GET /v1/objects":
        _valid_listing(case)


# (operation, phase, mode, status) -> requests, for the summary at the end
CALLS: Counter[tuple[str, str, str, int]] = Counter()


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: Any) -> None:
    meta = case.meta
    phase = meta.phase.name.value if meta is not None else "explicit"
    mode = meta.generation.mode.value if meta is not None else "positive"
    CALLS[(case.operation.label, phase, mode, response.status_code)] += 1


def calls_summary() -> str:
    per_operation: dict[str, Counter[str]] = {}
    for (label, phase, mode, status), count in sorted(CALLS.items()):
        per_operation.setdefault(label, Counter())[f"{phase}/{mode} {status}"] += count
    return "\n".join(
        f"{label}: {sum(counts.values())} requests ({', '.join(f'{k}: {v}' for k, v in counts.items())})"
        for label, counts in per_operation.items()
    )


CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "auth": {"openapi": {"HTTPBearer": {"bearer": API_KEY}}},
        # A deleted object's record stays readable, in state `deleted` without a
        # URL (the design's states; tests/test_delete.py): that GET after DELETE
        # answering 200 is the contract, not a use after free.
        "checks": {"use_after_free": {"enabled": False}},
        "request-timeout": 30,
    }
)
schema = schemathesis.openapi.from_path(OPENAPI_FILE, config=CONFIG)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceRunner]:
    RECEIVER.start()
    with ServiceRunner(tmp_path_factory.mktemp("schemathesis")) as runner:
        runner.start(
            {
                "VERIFIED_URLS_API_KEYS": f"{TENANT}:{API_KEY}",
                "VERIFIED_URLS_MAX_WAIT_SECONDS": "1",
                "VERIFIED_URLS_TENANT_READS_PER_SECOND": "0",
                "VERIFIED_URLS_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
            }
        )
        yield runner
    RECEIVER.stop()
    print(f"\nschemathesis requests by operation, phase/mode and status:\n{calls_summary()}")


@schema.parametrize()
@hypothesis.settings(deadline=None)
def test_every_operation(case: schemathesis.Case, service: ServiceRunner) -> None:
    case.call_and_validate(base_url=service.base_url)


class APIWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Scenarios along the document's links, counted, with every check failure kept."""

    base_url: ClassVar[str]
    scenarios: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    failures: ClassVar[list[FailureGroup]] = []

    def setup(self) -> None:
        type(self).scenarios += 1

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        type(self).steps += 1
        return {"base_url": self.base_url}

    def validate_response(
        self, response: Any, case: schemathesis.Case, *args: Any, **kwargs: Any
    ) -> None:
        try:
            super().validate_response(response, case, *args, **kwargs)
        except FailureGroup as exc:
            type(self).failures.append(exc)
            raise


def test_stateful_workflows(service: ServiceRunner) -> None:
    APIWorkflow.base_url = service.base_url
    for _ in range(STATEFUL_RESTARTS):
        left = STATEFUL_SCENARIOS - APIWorkflow.scenarios
        if left <= 0:
            break
        # Generation only, as schemathesis' own stateful settings: a replay
        # (shrinking, the example database) meets a service that has moved on
        settings: Any = hypothesis.settings(
            phases=[hypothesis.Phase.generate],
            max_examples=left,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        try:
            APIWorkflow.run(settings=settings)
        except FlakyStrategyDefinition:
            # Hypothesis walked a path it had walked before and the service, whose
            # state had moved on (more objects, names taken), answered otherwise,
            # so other links were open. No check failed: go on with new scenarios,
            # as schemathesis' own runner does. A check failure is never lost:
            if APIWorkflow.failures:
                raise APIWorkflow.failures[0] from None
    assert not APIWorkflow.failures
    assert APIWorkflow.scenarios >= STATEFUL_SCENARIOS, APIWorkflow.scenarios
    print(f"stateful: {APIWorkflow.scenarios} scenarios, {APIWorkflow.steps} calls")
