"""The misbehaving store: a fault-injecting HTTP proxy for path-style S3 requests.

Real stores misbehave rarely, so the service ships one that misbehaves on
purpose, at seeded rates, in front of any S3 endpoint::

    verified-urls chaos-proxy --upstream http://127.0.0.1:9000 \\
        --listen 127.0.0.1:9100 --profile eventual-madness --seed 7 \\
        --set slow_answer_seconds=3 --log chaos.jsonl

Faults (each a probability per eligible request; see `faults.FaultConfig`):
`error_403` / `error_500` / `error_503` (S3 XML: AccessDenied, InternalError,
SlowDown) and `error_429` (bare) on any request; `lost_put` (PutObject or
CompleteMultipartUpload answered 200 with a plausible ETag, nothing stored);
`corrupt` (one byte of a PutObject/UploadPart body flipped, headers untouched);
`slow_answer` (a write forwarded, its answer held `slow_answer_seconds`);
`reset` (RST in the middle of a request body, nothing forwarded); and,
independently, `late_visibility` (a stored key answers 404 to every GET and HEAD
for a delay drawn in [0, `visibility_delay_max_seconds`] from the store's
answer). `latency_seconds` delays every request. Profiles: `none`, `flaky`,
`eventual-madness` (`faults.PROFILES`).

Control API (never forwarded):

- `GET /_chaos/stats`: requests and forwarded requests by kind and method,
  injected faults by kind (`late_visibility` counts hiding writes,
  `late_visibility_404` the reads answered 404), answer statuses, hidden keys.
- `POST /_chaos/script` with one script or a list: `{"key": "bucket/key",
  "fault": "error_403", "method": "PUT", "times": 2}`; optional `part` (an
  UploadPart number) and `seconds` (late_visibility: required; slow_answer:
  overrides the setting). `method` is an HTTP method or an action name such as
  `UPLOAD_PART`. Scripts beat random draws and are exact (`faults.Script`).
- `GET /_chaos/script` lists pending scripts, `DELETE /_chaos/script` clears them.

`--log FILE` appends one JSON line per store request (control requests are not
logged): `time` (when the request arrived; `duration_seconds` runs to its answer), `method`, `kind` (put, upload_part, create_multipart,
complete_multipart, head, get, delete, list, other), `bucket`, `key`,
`part_number`, `fault` (null, a fault name, or `late_visibility` for a write
that hid its key and for a read answered 404 because of it), `scripted`,
`status` (what went to the client; null after a reset), `reached_store`,
`hidden_seconds`, `request_bytes`, `duration_seconds`.
"""

from service.chaos.background import ChaosProxy
from service.chaos.command import add_command, configure_parser, run_command
from service.chaos.faults import PROFILES, FaultConfig, Script, config_for

__all__ = [
    "PROFILES",
    "ChaosProxy",
    "FaultConfig",
    "Script",
    "add_command",
    "config_for",
    "configure_parser",
    "run_command",
]
