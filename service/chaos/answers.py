"""The answers the proxy makes up instead of the store's: S3-shaped, so clients parse them."""

from __future__ import annotations

import email.utils
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from service.chaos.faults import RequestInfo

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"

_ERRORS = {
    "error_403": (403, "AccessDenied", "Access Denied"),
    "error_500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "error_503": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/xml"

    def header_list(self, head_request: bool) -> list[tuple[bytes, bytes]]:
        request_id = uuid.uuid4().hex[:16].upper()
        # A HEAD answer carries no body, and S3 says so with a zero length.
        length = 0 if head_request else len(self.body)
        headers = [
            ("x-amz-request-id", request_id),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", "chaos-proxy"),
            ("Content-Length", str(length)),
        ]
        if self.body and not head_request:
            headers.append(("Content-Type", self.content_type))
        return [(k.encode(), v.encode()) for k, v in headers + self.headers]


def _error_xml(code: str, message: str, resource: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


def error_answer(fault: str, info: RequestInfo) -> Answer:
    """403 AccessDenied, 500 InternalError, 503 SlowDown, or a bare 429 (as some gateways do)."""
    if fault == "error_429":
        return Answer(429, headers=[("Retry-After", "1")])
    status, code, message = _ERRORS[fault]
    return Answer(status, _error_xml(code, message, "/" + info.path_key))


def not_found_answer(info: RequestInfo) -> Answer:
    body = _error_xml("NoSuchKey", "The specified key does not exist.", "/" + info.path_key)
    return Answer(404, body)


def bad_gateway_answer(info: RequestInfo, detail: str) -> Answer:
    return Answer(502, _error_xml("BadGateway", f"upstream store: {detail}", "/" + info.path_key))


def lost_put_answer(md5_hex: str) -> Answer:
    return Answer(200, headers=[("ETag", f'"{md5_hex}"')])


def lost_complete_answer(info: RequestInfo, complete_body: bytes, host: str) -> Answer:
    etag = multipart_etag_of(complete_body)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<CompleteMultipartUploadResult xmlns="{S3_NAMESPACE}">'
        f"<Location>http://{escape(host)}/{escape(info.path_key)}</Location>"
        f"<Bucket>{escape(info.bucket)}</Bucket><Key>{escape(info.key)}</Key>"
        f"<ETag>&quot;{etag}&quot;</ETag></CompleteMultipartUploadResult>"
    ).encode()
    return Answer(200, body)


def multipart_etag_of(complete_body: bytes) -> str:
    """The ETag the store would give the upload that a CompleteMultipartUpload body lists.

    The real one (MD5 of the parts' binary MD5s, dash, count), so that a client
    which computes it itself is fooled by a lost Complete exactly as by a real one.
    """
    try:
        root = ElementTree.fromstring(complete_body)
        etags = [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "ETag"]
        digests = b"".join(bytes.fromhex(etag.strip().strip('"')) for etag in etags)
    except (ElementTree.ParseError, ValueError):
        return f"{hashlib.md5(complete_body).hexdigest()}-1"
    return f"{hashlib.md5(digests).hexdigest()}-{max(len(etags), 1)}"


def json_answer(status: int, data: Any) -> Answer:
    return Answer(
        status, json.dumps(data, sort_keys=True).encode(), content_type="application/json"
    )
