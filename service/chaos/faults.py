"""What the misbehaving store injects, and when: rates, profiles, scripts, the seeded plan.

Nothing here does I/O: the proxy asks `FaultPlan.decide` what to do with each
request and tells it when a write has been stored, so the decisions can be
tested (and replayed) without a network.

Reproducibility. Every request to the store draws exactly four numbers from one
`random.Random(seed)`, in the order the proxy parsed the requests' headers,
whatever its kind and whether or not a script overrides the draw. A sequential
client therefore meets the same faults on every run with the same seed and the
same rates; with concurrent clients the arrival order, and so the assignment of
faults to requests, varies from run to run (the rates do not). Scripts are exact
whatever the concurrency.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, unquote

from service.storage.subresources import CONFIGURATION_SUBRESOURCES

ERROR_FAULTS = ("error_403", "error_500", "error_503", "error_429")
# At most one of these per request; their rates are slices of one draw.
EXCLUSIVE_FAULTS = (*ERROR_FAULTS, "lost_put", "corrupt", "slow_answer", "reset")
LATE_VISIBILITY = "late_visibility"
FAULT_NAMES = (*EXCLUSIVE_FAULTS, LATE_VISIBILITY)


class Action(StrEnum):
    """What an S3 request does, as far as faults and the log care."""

    PUT = "put"
    UPLOAD_PART = "upload_part"
    CREATE_MULTIPART = "create_multipart"
    COMPLETE_MULTIPART = "complete_multipart"
    HEAD = "head"
    GET = "get"
    DELETE = "delete"
    LIST = "list"
    OTHER = "other"


# Writes that make a key readable: they can be lost or become visible late.
KEY_WRITES = frozenset({Action.PUT, Action.COMPLETE_MULTIPART})
# Writes whose body is object bytes: they can be corrupted.
BYTE_WRITES = frozenset({Action.PUT, Action.UPLOAD_PART})
SLOW_ANSWERS = frozenset({Action.PUT, Action.UPLOAD_PART, Action.COMPLETE_MULTIPART})
READS = frozenset({Action.HEAD, Action.GET})

HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
# Query names that turn a bucket or object request into a configuration request.
_SUBRESOURCES = CONFIGURATION_SUBRESOURCES


class ConfigError(ValueError):
    """A profile, rate or setting that makes no sense."""


@dataclass(frozen=True)
class FaultConfig:
    """Every rate (a probability per eligible request) and setting of a run."""

    error_403: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    error_429: float = 0.0
    lost_put: float = 0.0
    corrupt: float = 0.0
    slow_answer: float = 0.0
    reset: float = 0.0
    late_visibility: float = 0.0  # per stored key, independent of the faults above
    visibility_delay_max_seconds: float = 5.0
    # Just past the service's default store read timeout (STORE_READ_TIMEOUT_SECONDS, 30).
    slow_answer_seconds: float = 35.0
    latency_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, not {value}")
            if name in FAULT_NAMES and value > 1:
                raise ConfigError(f"{name} is a probability: it must be <= 1, not {value}")
        total = sum(self.rate(name) for name in EXCLUSIVE_FAULTS)
        if total > 1 + 1e-9:
            raise ConfigError(
                f"the rates of {', '.join(EXCLUSIVE_FAULTS)} add up to {total:g}; "
                "at most one of them hits a request, so they must add up to <= 1"
            )

    def rate(self, name: str) -> float:
        value: float = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, float]) -> FaultConfig:
        unknown = sorted(set(overrides) - set(config_names()))
        if unknown:
            raise ConfigError(
                f"unknown rate or setting {', '.join(unknown)}; known: {', '.join(config_names())}"
            )
        return dataclasses.replace(self, **{name: float(v) for name, v in overrides.items()})


def config_names() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(FaultConfig))


PROFILES: dict[str, FaultConfig] = {
    "none": FaultConfig(),
    "flaky": FaultConfig(error_403=0.05, error_500=0.05, error_503=0.05, error_429=0.02),
    # The soak asks for >= 5% error answers, 2% lost PUTs, 2% corruptions and
    # visibility delays of several seconds.
    "eventual-madness": FaultConfig(
        error_403=0.02,
        error_500=0.02,
        error_503=0.02,
        error_429=0.01,
        lost_put=0.02,
        corrupt=0.02,
        slow_answer=0.01,
        reset=0.01,
        late_visibility=0.30,
        visibility_delay_max_seconds=8.0,
    ),
}


def config_for(profile: str, overrides: Mapping[str, float] | None = None) -> FaultConfig:
    try:
        base = PROFILES[profile]
    except KeyError:
        raise ConfigError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None
    return base.with_overrides(overrides or {})


def parse_assignment(text: str) -> tuple[str, float]:
    """`NAME=VALUE` as given to `--set`."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise ConfigError(f"expected NAME=VALUE, got {text!r}")
    if name not in config_names():
        raise ConfigError(f"unknown rate or setting {name!r}; known: {', '.join(config_names())}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    return name, number


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class RequestInfo:
    """What the proxy knows of a request once its headers are in."""

    method: str
    action: Action
    bucket: str
    key: str  # percent-decoded; empty for bucket-level requests
    part_number: int | None = None
    content_length: int | None = None  # None: chunked, length unknown
    aws_chunked: bool = False  # the body carries aws-chunked framing (SigV4 streaming)

    @property
    def path_key(self) -> str:
        """`bucket/key`, the name scripts and the hidden-key table use."""
        return f"{self.bucket}/{self.key}"

    @property
    def has_body(self) -> bool:
        return self.content_length is None or self.content_length > 0


def classify(method: str, target: str, headers: Mapping[str, str]) -> RequestInfo:
    """Turns a path-style S3 request line (and its framing headers) into a RequestInfo.

    `headers` has lower-case names. A request without Content-Length and without
    Transfer-Encoding has no body; with Transfer-Encoding its length is unknown.
    """
    path, _, query = target.partition("?")
    bucket, _, raw_key = path.lstrip("/").partition("/")
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)} - {"x-id"}
    content_length: int | None = 0
    if "transfer-encoding" in headers:
        content_length = None
    elif "content-length" in headers:
        content_length = int(headers["content-length"])
    part_number: int | None = None
    if "partNumber" in names:
        part_text = dict(parse_qsl(query, keep_blank_values=True))["partNumber"]
        part_number = int(part_text) if part_text.isdigit() else None
    content_sha = headers.get("x-amz-content-sha256", "")
    return RequestInfo(
        method=method,
        action=_action(method, bool(raw_key), names, "x-amz-copy-source" in headers),
        bucket=unquote(bucket),
        key=unquote(raw_key),
        part_number=part_number,
        content_length=content_length,
        aws_chunked=content_sha.startswith("STREAMING-")
        or "aws-chunked" in headers.get("content-encoding", ""),
    )


def _action(method: str, has_key: bool, names: set[str], copy: bool) -> Action:
    configuring = bool(names & _SUBRESOURCES)
    if not has_key:
        if method == "GET" and not configuring:
            return Action.LIST
        if method == "POST" and "delete" in names:
            return Action.DELETE
        return Action.OTHER
    if configuring or copy:
        return Action.OTHER
    if method == "PUT":
        if {"partNumber", "uploadId"} <= names:
            return Action.UPLOAD_PART
        return Action.PUT if not names else Action.OTHER
    if method == "POST":
        if "uploads" in names:
            return Action.CREATE_MULTIPART
        return Action.COMPLETE_MULTIPART if "uploadId" in names else Action.OTHER
    if method == "GET":
        return Action.OTHER if "uploadId" in names else Action.GET
    if method == "HEAD":
        return Action.HEAD
    if method == "DELETE":
        return Action.OTHER if "uploadId" in names else Action.DELETE
    return Action.OTHER


def eligible(fault: str, info: RequestInfo) -> bool:
    """Whether `fault` makes sense for this request (a rate is per eligible request)."""
    if fault in ERROR_FAULTS:
        return True
    if fault == "lost_put":
        return info.action in KEY_WRITES
    if fault == "corrupt":
        return info.action in BYTE_WRITES and info.has_body
    if fault == "slow_answer":
        return info.action in SLOW_ANSWERS
    if fault == "reset":
        return info.has_body
    return False


# ---------------------------------------------------------------- scripts


class ScriptError(ValueError):
    """A script that cannot be followed."""


@dataclass
class Script:
    """ "The next `times` requests of `key` (of `method`, of `part`) get `fault`."

    `method` is an HTTP method (`PUT` matches PutObject and UploadPart alike) or
    an action name in capitals (`UPLOAD_PART`, `COMPLETE_MULTIPART`, ...);
    None matches any method. `part` restricts the script to UploadPart requests
    of that part number. A script only matches requests the fault makes sense
    for (see `eligible`): `{"method": "PUT", "fault": "lost_put"}` skips
    UploadPart requests and `corrupt` skips empty bodies.

    `late_visibility` scripts ignore `method`: the next `times` writes of the key
    that the store answers with 2xx hide it for `seconds`. `seconds` on a
    `slow_answer` script overrides the `slow_answer_seconds` setting.
    """

    key: str
    fault: str
    method: str | None = None
    part: int | None = None
    times: int = 1
    seconds: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> Script:
        if not isinstance(data, dict):
            raise ScriptError("a script is a JSON object")
        unknown = set(data) - {"key", "fault", "method", "part", "times", "seconds"}
        if unknown:
            raise ScriptError(f"unknown script fields: {', '.join(sorted(unknown))}")
        key, fault = data.get("key"), data.get("fault")
        if not isinstance(key, str) or "/" not in key:
            raise ScriptError('"key" must be "bucket/key"')
        if fault not in FAULT_NAMES:
            raise ScriptError(f'"fault" must be one of {", ".join(FAULT_NAMES)}')
        method = data.get("method")
        if method is not None and (not isinstance(method, str) or not _known_method(method)):
            raise ScriptError(
                '"method" must be an HTTP method or an action name such as "UPLOAD_PART"'
            )
        times, part, seconds = data.get("times", 1), data.get("part"), data.get("seconds")
        if not _is_int(times) or times < 1:
            raise ScriptError('"times" must be an integer >= 1')
        if part is not None and (not _is_int(part) or part < 1):
            raise ScriptError('"part" must be an integer >= 1')
        if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
            raise ScriptError('"seconds" must be a number >= 0')
        if fault == LATE_VISIBILITY and seconds is None:
            raise ScriptError('a late_visibility script needs "seconds"')
        return cls(
            key=key,
            fault=fault,
            method=method.upper() if method else None,
            part=part,
            times=times,
            seconds=None if seconds is None else float(seconds),
        )

    def matches(self, info: RequestInfo) -> bool:
        if self.times < 1 or self.key != info.path_key or not eligible(self.fault, info):
            return False
        if self.part is not None and (
            info.action is not Action.UPLOAD_PART or info.part_number != self.part
        ):
            return False
        if self.method is None:
            return True
        if self.method in HTTP_METHODS:
            return info.method == self.method
        return info.action.value == self.method.lower()

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _known_method(method: str) -> bool:
    return method.upper() in HTTP_METHODS or method.lower() in {a.value for a in Action}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Decision:
    """What to do with one request."""

    fault: str | None  # an EXCLUSIVE_FAULTS name, LATE_VISIBILITY for a hidden read, or None
    scripted: bool = False
    position: float = 0.0  # in [0, 1): where in the body to corrupt or to cut
    slow_seconds: float = 0.0
    # A write the store accepts hides its key this long, unless a script says otherwise.
    hide_seconds: float | None = None


class FaultPlan:
    """The seeded source of faults, the scripts, and which keys are hidden until when.

    Not thread-safe: the proxy calls it from its event loop only.
    """

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._random = random.Random(seed)
        self._scripts: list[Script] = []
        self._hidden_until: dict[str, float] = {}  # path key -> monotonic time

    def decide(self, info: RequestInfo, now: float) -> Decision:
        # Always four draws, so that one request's kind never shifts the faults of the next.
        fault_draw, visible_draw, delay_draw, position = (self._random.random() for _ in range(4))
        script = self._take_script(info)
        if script is not None:
            slow = script.seconds if script.seconds is not None else self.config.slow_answer_seconds
            return Decision(script.fault, True, position, slow, None)
        if info.action in READS and self._hidden_until.get(info.path_key, 0.0) > now:
            return Decision(LATE_VISIBILITY, False, position)
        fault = self._draw_fault(fault_draw, info)
        hide_seconds = None
        if info.action in KEY_WRITES and visible_draw < self.config.late_visibility:
            hide_seconds = delay_draw * self.config.visibility_delay_max_seconds
        return Decision(fault, False, position, self.config.slow_answer_seconds, hide_seconds)

    def _draw_fault(self, draw: float, info: RequestInfo) -> str | None:
        # Each fault owns a slice of [0, 1) as wide as its rate; a draw landing in the
        # slice of a fault this request is not eligible for means no fault, so each
        # rate stays exactly "per eligible request".
        edge = 0.0
        for name in EXCLUSIVE_FAULTS:
            edge += self.config.rate(name)
            if draw < edge:
                return name if eligible(name, info) else None
        return None

    def _take_script(self, info: RequestInfo) -> Script | None:
        for script in self._scripts:
            if script.fault != LATE_VISIBILITY and script.matches(info):
                script.times -= 1
                self._scripts = [s for s in self._scripts if s.times > 0]
                return script
        return None

    def stored(self, info: RequestInfo, decision: Decision, now: float) -> float | None:
        """A write of `info`'s key was answered 2xx by the store: hide the key if due.

        Returns how long the key stays hidden, or None.
        """
        if info.action not in KEY_WRITES:
            return None
        seconds = decision.hide_seconds
        for script in self._scripts:
            if script.fault == LATE_VISIBILITY and script.key == info.path_key:
                script.times -= 1
                seconds = script.seconds
                self._scripts = [s for s in self._scripts if s.times > 0]
                break
        if seconds is None:
            return None
        # A key hidden by an earlier write stays hidden at least as long as that write said.
        until = max(now + seconds, self._hidden_until.get(info.path_key, 0.0))
        self._hidden_until[info.path_key] = until
        return seconds

    def hidden_keys(self, now: float) -> int:
        self._hidden_until = {k: t for k, t in self._hidden_until.items() if t > now}
        return len(self._hidden_until)

    def add_script(self, script: Script) -> None:
        self._scripts.append(script)

    def clear_scripts(self) -> None:
        self._scripts.clear()

    def scripts(self) -> list[Script]:
        return list(self._scripts)
