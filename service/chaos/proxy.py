"""The fault-injecting S3 proxy: asyncio streams and h11, no framework.

A framework would hide the connection, and two faults need it: a reset (RST in
the middle of a request body) and a slow answer (hold a response the store has
already given). Each client connection gets its own store connection, opened on
its first forwarded request and kept alive as long as both sides keep theirs,
so a keep-alive client keeps one store connection too.

Bodies stream both ways one chunk at a time (`CHUNK_BYTES`), whatever their
size; the only bodies read whole are the proxy's own control requests and the
XML of a CompleteMultipartUpload whose answer is faked (a lost Complete).
Requests are forwarded as received: method, target (path and query, still
percent-encoded), headers with their case, and the client's Host header, which
SigV4 signs. A body's framing may change (h11 re-frames chunked bodies) but
never its bytes, except for the one byte a `corrupt` fault flips.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http
import json
import logging
import socket
import ssl
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import h11

from service.chaos.answers import (
    Answer,
    bad_gateway_answer,
    error_answer,
    json_answer,
    lost_complete_answer,
    lost_put_answer,
    not_found_answer,
)
from service.chaos.faults import (
    ERROR_FAULTS,
    FAULT_NAMES,
    LATE_VISIBILITY,
    Action,
    ConfigError,
    Decision,
    FaultConfig,
    FaultPlan,
    RequestInfo,
    Script,
    ScriptError,
    classify,
)

CHUNK_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_CONTROL_BODY_BYTES = 1024 * 1024
# A Complete listing 10,000 parts (S3's maximum) is about 1 MB of XML.
MAX_COMPLETE_BODY_BYTES = 8 * 1024 * 1024
CLOSE_TIMEOUT_SECONDS = 1.0
CONTROL_PREFIX = "/_chaos"

logger = logging.getLogger(__name__)


class PeerGone(ConnectionError):
    """The other side closed the connection in the middle of an exchange."""


# ---------------------------------------------------------------- connections


class Peer:
    """One end of an HTTP/1.1 connection: h11's state machine over an asyncio stream."""

    def __init__(self, role: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reader = reader
        self.writer = writer

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(CHUNK_BYTES))
                continue
            if isinstance(event, h11.Event):
                return event
            # PAUSED: only after a complete exchange, which the caller never reads past.
            raise RuntimeError("h11 paused the connection")

    async def body_event(self) -> h11.Data | h11.EndOfMessage:
        event = await self.next_event()
        if isinstance(event, h11.Data | h11.EndOfMessage):
            return event
        raise PeerGone("connection closed in the middle of a body")

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def reset(self) -> None:
        """Closes with an RST instead of a FIN: the peer sees 'connection reset'."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT_SECONDS)
        except (OSError, TimeoutError):
            # A peer that stopped reading would keep the socket open forever.
            self.writer.transport.abort()


@dataclass(frozen=True)
class Upstream:
    """The store behind the proxy."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"upstream must be an http(s)://host[:port] URL, not {url!r}")
        if parts.path not in {"", "/"} or parts.query:
            raise ConfigError(f"upstream must have no path: requests keep theirs ({url!r})")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(url.rstrip("/"), parts.hostname, port, parts.scheme == "https")

    async def connect(self) -> Peer:
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        return Peer(h11.CLIENT, reader, writer)


class UpstreamLink:
    """The store connection of one client connection, kept alive between its requests."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._peer: Peer | None = None

    async def connect(self) -> tuple[Peer, bool]:
        """The connection to send the next request on, and whether it was used before."""
        peer = self._peer
        if peer is not None and peer.conn.our_state is h11.IDLE and not peer.reader.at_eof():
            return peer, True
        await self.close()
        self._peer = await self._upstream.connect()
        return self._peer, False

    async def finish(self) -> None:
        """After an exchange: keep the connection if both sides are done, else drop it."""
        peer = self._peer
        if peer is not None and peer.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            peer.conn.start_next_cycle()
            return
        await self.close()

    async def close(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            await peer.close()


# ---------------------------------------------------------------- records


@dataclass
class Record:
    """One request to the store as the proxy handled it: a log line, a stats entry."""

    info: RequestInfo
    decision: Decision
    started: float = field(default_factory=time.monotonic)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    status: int | None = None  # None: no answer (reset, or the connection broke)
    reached_store: bool = False
    hidden_seconds: float | None = None
    request_bytes: int = 0
    finished: bool = False

    @property
    def fault(self) -> str | None:
        if self.decision.fault is None and self.hidden_seconds is not None:
            return LATE_VISIBILITY
        return self.decision.fault

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "method": self.info.method,
            "kind": self.info.action.value,
            "bucket": self.info.bucket,
            "key": self.info.key,
            "part_number": self.info.part_number,
            "fault": self.fault,
            "scripted": self.decision.scripted,
            "status": self.status,
            "reached_store": self.reached_store,
            "hidden_seconds": self.hidden_seconds,
            "request_bytes": self.request_bytes,
            "duration_seconds": round(time.monotonic() - self.started, 6),
        }


@dataclass
class Stats:
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    requests_by_method: Counter[str] = field(default_factory=Counter)
    forwarded_by_kind: Counter[str] = field(default_factory=Counter)
    forwarded_by_method: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    scripted: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    def count(self, record: Record) -> None:
        kind, method = record.info.action.value, record.info.method
        self.requests_by_kind[kind] += 1
        self.requests_by_method[method] += 1
        if record.reached_store:
            self.forwarded_by_kind[kind] += 1
            self.forwarded_by_method[method] += 1
        self.statuses[str(record.status)] += 1
        fault = record.decision.fault
        if fault == LATE_VISIBILITY:
            # A read answered 404: kept apart from the writes that hid keys.
            self.injected["late_visibility_404"] += 1
        elif fault is not None:
            self.injected[fault] += 1
        if record.hidden_seconds is not None:
            self.injected[LATE_VISIBILITY] += 1
        if record.decision.scripted and fault is not None:
            self.scripted[fault] += 1

    def as_json(self) -> dict[str, Any]:
        injected = {name: self.injected[name] for name in (*FAULT_NAMES, "late_visibility_404")}
        return {
            "requests": {
                "total": sum(self.requests_by_kind.values()),
                "by_kind": dict(self.requests_by_kind),
                "by_method": dict(self.requests_by_method),
            },
            "forwarded": {
                "total": sum(self.forwarded_by_kind.values()),
                "by_kind": dict(self.forwarded_by_kind),
                "by_method": dict(self.forwarded_by_method),
            },
            "injected": injected,
            "injected_total": sum(injected.values()),
            "scripted": dict(self.scripted),
            "statuses": dict(self.statuses),
        }


# ---------------------------------------------------------------- corruption


class ByteFlipper:
    """Flips one byte of a streamed body, at a position drawn before the body arrived."""

    def __init__(self, position: float, info: RequestInfo) -> None:
        self._position = position
        self._aws_chunked = info.aws_chunked
        self._offset: int | None = None
        if info.content_length and not info.aws_chunked:
            self._offset = int(position * info.content_length)
        self._seen = 0
        self.flipped = False

    def apply(self, data: bytes) -> bytes:
        start = self._seen
        self._seen += len(data)
        if self.flipped or not data:
            return data
        if self._offset is None:
            self._offset = start + self._offset_in_first_chunk(data)
        if not start <= self._offset < self._seen:
            return data
        self.flipped = True
        i = self._offset - start
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]

    def _offset_in_first_chunk(self, data: bytes) -> int:
        """Where to flip when the length is unknown: in the first chunk that arrives.

        An aws-chunked body starts `<hex size>[;chunk-signature=...]\\r\\n<data>`;
        flipping a byte of its framing would make the store refuse the request
        rather than store wrong bytes, so the flip goes into the first chunk's data.
        """
        if self._aws_chunked:
            end = data.find(b"\r\n")
            if end > 0:
                try:
                    size = int(data[:end].split(b";")[0], 16)
                except ValueError:
                    size = 0
                payload = min(size, len(data) - end - 2)
                if payload > 0:
                    return end + 2 + int(self._position * payload)
        return int(self._position * len(data))


# ---------------------------------------------------------------- the server


class ProxyServer:
    """The proxy on the running event loop. `ChaosProxy` runs one in a thread."""

    def __init__(
        self,
        upstream: str,
        config: FaultConfig,
        seed: int,
        *,
        profile: str = "custom",
        log_path: Path | None = None,
    ) -> None:
        self.upstream = Upstream.parse(upstream)
        self.plan = FaultPlan(config, seed)
        self.profile = profile
        self._stats = Stats()
        self._log_path = log_path
        self._log: TextIO | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port)
        if self._log_path is not None:
            # Line-buffered: a reader of the log (the soak run) sees each request at once.
            self._log = self._log_path.open("a", encoding="utf-8", buffering=1)

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Held answers and idle keep-alive connections would otherwise keep it open.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "profile": self.profile,
            "seed": self.plan.seed,
            "config": self.plan.config.as_dict(),
            **self._stats.as_json(),
            "hidden_keys": self.plan.hidden_keys(now),
            "scripts_pending": len(self.plan.scripts()),
        }

    # ------------------------------------------------------------ one connection

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        client = Peer(h11.SERVER, reader, writer)
        link = UpstreamLink(self.upstream)
        try:
            await self._serve(client, link)
        except (OSError, h11.ProtocolError):
            pass  # a client or store that went away mid-exchange: nobody left to answer
        except asyncio.CancelledError:
            # close() cancels this task and waits for it. Ending it normally matters on
            # Python 3.11, whose streams call task.exception() on a cancelled task and
            # report the CancelledError as an unhandled exception.
            pass
        except Exception:
            logger.exception("chaos-proxy: connection failed")
        finally:
            await link.close()
            await client.close()
            self._connections.discard(task)

    async def _serve(self, client: Peer, link: UpstreamLink) -> None:
        while True:
            try:
                event = await client.next_event()
            except h11.RemoteProtocolError:
                await self._refuse(client)
                return
            if not isinstance(event, h11.Request):
                return  # the client closed its keep-alive connection
            if not await self._exchange(client, link, event):
                return
            if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                return  # e.g. "Connection: close" from either side
            client.conn.start_next_cycle()

    async def _refuse(self, client: Peer) -> None:
        if client.conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            await self._send_answer(client, False, json_answer(400, {"error": "bad request"}))

    async def _exchange(self, client: Peer, link: UpstreamLink, request: h11.Request) -> bool:
        """Handles one request; returns whether the client connection may be reused."""
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        path = target.partition("?")[0]
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            return await self._control(client, method, path)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        info = classify(method, target, headers)
        record = Record(info, self.plan.decide(info, time.monotonic()))
        try:
            if self.plan.config.latency_seconds > 0:
                await asyncio.sleep(self.plan.config.latency_seconds)
            return await self._act(client, link, request, record)
        finally:
            self._finish(record)

    def _finish(self, record: Record) -> None:
        """Counts and logs the request, once.

        Called just before the last bytes of the answer go out (and again, to no
        effect, when the exchange ends), so that whoever has heard the answer
        finds the request in the stats and the log.
        """
        if record.finished:
            return
        record.finished = True
        self._stats.count(record)
        if self._log is not None:
            self._log.write(json.dumps(record.as_json()) + "\n")

    async def _act(
        self, client: Peer, link: UpstreamLink, request: h11.Request, record: Record
    ) -> bool:
        info, fault = record.info, record.decision.fault
        if fault == LATE_VISIBILITY:
            await self._answer(client, record, not_found_answer(info))
            return True
        if fault in ERROR_FAULTS:
            await self._answer(client, record, error_answer(fault, info))
            return True
        if fault == "reset":
            await self._reset(client, record)
            return False
        if fault == "lost_put":
            await self._lose_write(client, request, record)
            return True
        return await self._forward(client, link, request, record)

    # ------------------------------------------------------------ made-up answers

    async def _continue(self, client: Peer) -> None:
        """Lets a client that sent `Expect: 100-continue` send its body."""
        if client.conn.they_are_waiting_for_100_continue:
            await client.send(h11.InformationalResponse(status_code=100, headers=[]))

    async def _read_body(self, client: Peer, record: Record | None, limit: int) -> bytes:
        """The whole body, up to `limit` bytes kept; the rest is read and dropped."""
        await self._continue(client)
        kept = bytearray()
        while client.conn.their_state is h11.SEND_BODY:
            event = await client.body_event()
            if isinstance(event, h11.Data):
                if record is not None:
                    record.request_bytes += len(event.data)
                kept += event.data[: max(0, limit - len(kept))]
        return bytes(kept)

    async def _answer(self, client: Peer, record: Record, answer: Answer) -> None:
        # The body is read first even though the answer does not need it: a client
        # still sending would otherwise wait on a full socket, or take the rest of
        # its body for the start of the next request.
        await self._read_body(client, record, 0)
        record.status = answer.status
        self._finish(record)
        await self._send_answer(client, record.info.method == "HEAD", answer)

    async def _send_answer(self, client: Peer, head: bool, answer: Answer) -> None:
        reason = http.HTTPStatus(answer.status).phrase.encode()
        await client.send(
            h11.Response(status_code=answer.status, headers=answer.header_list(head), reason=reason)
        )
        if answer.body and not head:
            await client.send(h11.Data(data=answer.body))
        await client.send(h11.EndOfMessage())

    async def _reset(self, client: Peer, record: Record) -> None:
        info = record.info
        if info.has_body:
            # Part of the body first, as when a network drops a connection mid-upload.
            await self._continue(client)
            wanted = max(1, int(record.decision.position * (info.content_length or 0)))
            while record.request_bytes < wanted and client.conn.their_state is h11.SEND_BODY:
                event = await client.body_event()
                if isinstance(event, h11.Data):
                    record.request_bytes += len(event.data)
        self._finish(record)
        client.reset()

    async def _lose_write(self, client: Peer, request: h11.Request, record: Record) -> None:
        info = record.info
        if info.action is Action.PUT:
            await self._continue(client)
            digest = hashlib.md5()
            while client.conn.their_state is h11.SEND_BODY:
                event = await client.body_event()
                if isinstance(event, h11.Data):
                    digest.update(event.data)
                    record.request_bytes += len(event.data)
            answer = lost_put_answer(digest.hexdigest())
        else:
            body = await self._read_body(client, record, MAX_COMPLETE_BODY_BYTES)
            host = dict(request.headers).get(b"host", b"").decode("latin-1")
            answer = lost_complete_answer(info, body, host)
        record.status = answer.status
        self._finish(record)
        await self._send_answer(client, False, answer)

    # ------------------------------------------------------------ forwarding

    async def _forward(
        self, client: Peer, link: UpstreamLink, request: h11.Request, record: Record
    ) -> bool:
        has_body = client.conn.their_state is h11.SEND_BODY
        await self._continue(client)
        outgoing = h11.Request(
            method=request.method, target=request.target, headers=request.headers.raw_items()
        )
        pump: asyncio.Task[bool] | None = None
        try:
            # Only a request without a body can be sent again: a body, once read, is gone.
            for attempt in (1, 2):
                upstream, reused = await link.connect()
                try:
                    await upstream.send(outgoing)
                    record.reached_store = True
                    if has_body:
                        pump = asyncio.create_task(self._pump(client, upstream, record))
                    response = await self._await_answer(upstream, pump)
                    break
                except (OSError, h11.ProtocolError):
                    await link.close()
                    # An idle keep-alive connection the store had closed: try a fresh one.
                    if has_body or not reused or attempt == 2:
                        raise
            return await self._relay(client, link, upstream, response, record, pump)
        except (OSError, h11.ProtocolError) as exc:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            await link.close()
            return await self._bad_gateway(client, record, exc, has_body)
        finally:
            if pump is not None:
                pump.cancel()  # when the proxy itself is stopping; a no-op once it is done

    async def _bad_gateway(
        self, client: Peer, record: Record, exc: Exception, had_body: bool
    ) -> bool:
        if client.conn.our_state is not h11.SEND_RESPONSE:
            return False  # part of an answer went out already: only a close can tell
        answer = bad_gateway_answer(record.info, str(exc) or type(exc).__name__)
        if had_body:
            # Where the client's body stands is unknown once a pump was cut short: the
            # connection ends here, and the client must know it so as not to reuse it.
            answer = dataclasses.replace(answer, headers=[*answer.headers, ("Connection", "close")])
        record.status = answer.status
        self._finish(record)
        await self._send_answer(client, record.info.method == "HEAD", answer)
        return not had_body

    async def _await_answer(self, upstream: Peer, pump: asyncio.Task[bool] | None) -> h11.Response:
        """The store's answer head; fails at once if the client's body breaks off first.

        Without this, a client gone mid-body would leave the proxy waiting for an
        answer the store will never give: it still waits for the rest of the body.
        """
        head = asyncio.ensure_future(self._response_head(upstream))
        try:
            if pump is not None:
                await asyncio.wait({head, pump}, return_when=asyncio.FIRST_COMPLETED)
                failure = pump.exception() if pump.done() else None
                if failure is not None and not head.done():
                    raise failure
            return await head
        finally:
            head.cancel()

    async def _response_head(self, upstream: Peer) -> h11.Response:
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise PeerGone("the store closed the connection before answering")

    async def _pump(self, client: Peer, upstream: Peer, record: Record) -> bool:
        """Streams the client's body to the store; returns whether the store got all of it.

        Runs beside the relay of the answer, so a store that answers before reading
        the whole body (an early error) cannot deadlock the proxy.
        """
        flipper = ByteFlipper(record.decision.position, record.info)
        corrupt = record.decision.fault == "corrupt"
        delivered = True
        while True:
            event = await client.body_event()
            if isinstance(event, h11.Data):
                record.request_bytes += len(event.data)
                if corrupt:
                    event = h11.Data(data=flipper.apply(bytes(event.data)))
            if delivered:
                try:
                    await upstream.send(event)
                except (OSError, h11.LocalProtocolError):
                    delivered = False  # keep reading: the client must get to its answer
            if isinstance(event, h11.EndOfMessage):
                return delivered

    async def _relay(
        self,
        client: Peer,
        link: UpstreamLink,
        upstream: Peer,
        response: h11.Response,
        record: Record,
        pump: asyncio.Task[bool] | None,
    ) -> bool:
        """Passes the store's answer on (after holding it, for a slow answer)."""
        if 200 <= response.status_code < 300:
            # Hidden from the moment the store answered, not from when the client hears it.
            record.hidden_seconds = self.plan.stored(record.info, record.decision, time.monotonic())
        answer = h11.Response(
            status_code=response.status_code,
            headers=response.headers.raw_items(),
            reason=response.reason,
        )
        if record.decision.fault == "slow_answer":
            return await self._relay_late(client, link, upstream, answer, record, pump)
        record.status = response.status_code
        # One event behind the store, so that the request is recorded before the
        # event that completes the answer for the client (for a HEAD: the head).
        outgoing: h11.Event = answer
        while True:
            following = await upstream.body_event()
            if isinstance(following, h11.EndOfMessage):
                if pump is not None:
                    await pump
                self._finish(record)
                await client.send(outgoing)
                await client.send(following)
                break
            await client.send(outgoing)
            outgoing = following
        await link.finish()
        return True

    async def _relay_late(
        self,
        client: Peer,
        link: UpstreamLink,
        upstream: Peer,
        answer: h11.Response,
        record: Record,
        pump: asyncio.Task[bool] | None,
    ) -> bool:
        # Answers to writes are a few hundred bytes at most: holding one whole is cheap.
        events: list[h11.Data | h11.EndOfMessage] = []
        while not events or not isinstance(events[-1], h11.EndOfMessage):
            events.append(await upstream.body_event())
        if pump is not None:
            await pump
        await link.finish()
        await asyncio.sleep(record.decision.slow_seconds)
        record.status = answer.status_code
        self._finish(record)
        try:
            await client.send(answer)
            for event in events:
                await client.send(event)
        except OSError:
            return False  # the client gave up waiting, which was the point
        return True

    # ------------------------------------------------------------ control API

    async def _control(self, client: Peer, method: str, path: str) -> bool:
        body = await self._read_body(client, None, MAX_CONTROL_BODY_BYTES)
        answer = self._control_answer(method, path.rstrip("/"), body)
        await self._send_answer(client, method == "HEAD", answer)
        return True

    def _control_answer(self, method: str, path: str, body: bytes) -> Answer:
        if path == CONTROL_PREFIX + "/stats":
            if method != "GET":
                return json_answer(405, {"error": "GET /_chaos/stats"})
            return json_answer(200, self.stats())
        if path != CONTROL_PREFIX + "/script":
            return json_answer(
                404, {"error": "unknown control path", "paths": ["/_chaos/stats", "/_chaos/script"]}
            )
        if method == "GET":
            return json_answer(200, {"scripts": [s.as_json() for s in self.plan.scripts()]})
        if method == "DELETE":
            self.plan.clear_scripts()
            return json_answer(200, {"scripts": []})
        if method != "POST":
            return json_answer(405, {"error": "GET, POST or DELETE /_chaos/script"})
        try:
            data = json.loads(body or b"null")
            scripts = [
                Script.from_json(item) for item in (data if isinstance(data, list) else [data])
            ]
        except (ValueError, ScriptError) as exc:
            return json_answer(400, {"error": str(exc)})
        for script in scripts:
            self.plan.add_script(script)
        return json_answer(201, {"scripts": [s.as_json() for s in self.plan.scripts()]})
