"""Upload bodies, streamed: a raw body, or the `file` field of multipart/form-data."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service import errors

DEFAULT_CONTENT_TYPE = "application/octet-stream"
FILE_FIELD = "file"


class RawBody:
    def __init__(self, request: Request, content_type: str | None = None) -> None:
        self._request = request
        if content_type is None:
            content_type = request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
        self.content_type = content_type

    def chunks(self) -> AsyncIterator[bytes]:
        return self._request.stream()


class FormFileBody:
    """The first `file` field of a multipart/form-data body, parsed as it arrives.
    Its content type is the part's, unless `content_type` is given."""

    def __init__(self, request: Request, boundary: bytes, content_type: str | None = None) -> None:
        self._request = request
        self._boundary = boundary
        self._forced_content_type = content_type
        self.content_type = DEFAULT_CONTENT_TYPE if content_type is None else content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        out: list[bytes] = []
        header_field = bytearray()
        header_value = bytearray()
        headers: dict[bytes, bytes] = {}
        state = {"in_file": False, "seen_file": False, "file_ended": False, "ended": False}

        def on_part_begin() -> None:
            headers.clear()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            headers[bytes(header_field).lower()] = bytes(header_value)
            header_field.clear()
            header_value.clear()

        def on_headers_finished() -> None:
            _, options = parse_options_header(headers.get(b"content-disposition", b""))
            is_file = options.get(b"name") == FILE_FIELD.encode() and not state["seen_file"]
            state["in_file"] = is_file
            if is_file:
                state["seen_file"] = True
                content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
                if self._forced_content_type is None:
                    self.content_type = content_type or DEFAULT_CONTENT_TYPE

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["in_file"]:
                out.append(data[start:end])

        def on_part_end() -> None:
            if state["in_file"]:
                state["file_ended"] = True
            state["in_file"] = False

        def on_end() -> None:
            state["ended"] = True

        try:
            parser = MultipartParser(
                self._boundary,
                {
                    "on_part_begin": on_part_begin,
                    "on_header_field": on_header_field,
                    "on_header_value": on_header_value,
                    "on_header_end": on_header_end,
                    "on_headers_finished": on_headers_finished,
                    "on_part_data": on_part_data,
                    "on_part_end": on_part_end,
                    "on_end": on_end,
                },
            )
            async for chunk in self._request.stream():
                parser.write(chunk)
                for piece in out:
                    yield piece
                out.clear()
            parser.finalize()
        except errors.ServiceError:
            raise
        except Exception as exc:  # the parser's own errors: a malformed body
            raise errors.invalid_request(f"malformed multipart body: {exc}") from exc
        for piece in out:
            yield piece
        if not state["seen_file"]:
            raise errors.invalid_request("the multipart body has no 'file' field")
        if not (state["file_ended"] and state["ended"]):
            # a body cut short would otherwise be stored as a complete object
            raise errors.invalid_request("the multipart body ends before its closing boundary")


def upload_body(request: Request, content_type: str | None = None) -> RawBody | FormFileBody:
    """The upload's body; `content_type`, when given, is the object's content type
    whatever the request's (or its form part's) says."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    if media_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise errors.invalid_request("multipart/form-data without a boundary")
        return FormFileBody(request, boundary, content_type)
    return RawBody(request, content_type)
