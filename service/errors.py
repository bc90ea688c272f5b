"""One error type with a stable machine code, rendered as RFC 9457 problem details."""

from __future__ import annotations

from http import HTTPStatus

PROBLEM_TYPE_BASE = "https://verified-urls.dev/problems/"


class ServiceError(Exception):
    """A client-facing failure. `code` is stable; scripts depend on it."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    def problem(self, instance: str | None = None) -> dict[str, object]:
        body: dict[str, object] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        return body


def invalid_name(detail: str) -> ServiceError:
    return ServiceError(400, "invalid_name", detail)


def invalid_request(detail: str, status: int = 400) -> ServiceError:
    return ServiceError(status, "invalid_request", detail)


def name_taken(name: str) -> ServiceError:
    return ServiceError(
        409, "name_taken", f"a pending or verified object already has the name {name!r}"
    )


def idempotency_key_reused() -> ServiceError:
    return ServiceError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used for another upload "
        "(another name, body, content type or callback URL)",
    )


def too_large(limit: int) -> ServiceError:
    return ServiceError(413, "too_large", f"the object is larger than the limit of {limit} bytes")


def digest_mismatch(which: str) -> ServiceError:
    return ServiceError(400, "digest_mismatch", f"the body does not match its {which} header")


def overloaded(detail: str, retry_after_seconds: int = 30) -> ServiceError:
    return ServiceError(503, "overloaded", detail, {"Retry-After": str(retry_after_seconds)})


def not_found(detail: str = "no such object") -> ServiceError:
    return ServiceError(404, "not_found", detail)


def invalid_callback_url(detail: str) -> ServiceError:
    return ServiceError(400, "invalid_callback_url", detail)


def object_deleted() -> ServiceError:
    return ServiceError(409, "object_deleted", "the object is deleted: its events are not sent")
