"""A lean HTTP/1.1 client for the judge's hot path: JSON POSTs over kept-alive plain-http connections.

At the concurrencies a local judge server takes (a vLLM, SGLang or llama.cpp server on the same network, or
``metapo serve-judge``), the client's CPU per request bounds throughput: a server answering a wave of C requests
at once makes the client handle them one after another before the next wave goes out. httpx spends about 1 ms
of CPU per request on layers the judge does not need (a generic request model, cookies, redirects, anyio,
connection-pool bookkeeping). This client does one thing: write one POST, read one response (Content-Length,
chunked, or until the connection closes), capped in size, over a small pool of kept-alive connections per event
loop. It is used only for ``http://`` URLs that no proxy setting covers; everything else (TLS, proxies) goes
through httpx, as before.

Errors: :class:`LeanHTTPError` for anything the transport or the response framing gets wrong (the backend maps
it onto a transient judge error, like httpx's transport errors). A connection is reused only after a complete,
well-framed response; one that failed, was cancelled (a timeout) or was closed by the server is dropped.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

_HEAD_LIMIT = 64 * 1024  # status line and headers


class LeanHTTPError(Exception):
    """The connection failed, or the response was not well-formed HTTP/1.1."""


@dataclass
class Reply:
    """One HTTP response: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def _header_value(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0") or any(c in name for c in "\r\n\0: "):
        # The value may be a secret: it is not repeated.
        raise ValueError(f"HTTP header {name!r} holds a line break or NUL")
    return value


class LeanConnectionPool:
    """Kept-alive connections of one event loop to one ``host:port``.

    Args:
        host: Server host.
        port: Server port.
        connect_timeout_s: Limit on opening a connection.
        max_idle: Most idle connections kept.
    """

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0, max_idle: int = 256) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer = self._idle.pop()
            # The server may have closed an idle connection (its keep-alive timeout, or a dropped request):
            # the event loop has then fed the reader its end of file. Never send on such a connection.
            if reader.at_eof() or writer.is_closing() or reader.exception() is not None:
                writer.close()
                continue
            return reader, writer
        return None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncio.open_connection(self.host, self.port, limit=_HEAD_LIMIT)
        except TimeoutError:
            raise LeanHTTPError(f"no connection within {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise LeanHTTPError(f"cannot connect: {type(exc).__name__}: {exc}") from None

    async def post(self, target: str, body: bytes, headers: dict[str, str], max_bytes: int) -> Reply:
        """POSTs ``body`` (JSON) to ``target`` (the path) and returns the reply, its body capped at ``max_bytes``.

        Raises:
            LeanHTTPError: Connection failure, a dropped connection, a malformed or oversized response.
        """
        lines = [
            f"POST {target} HTTP/1.1",
            f"Host: {self.host_header}",
            "Accept: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {_header_value(name, value)}" for name, value in headers.items()),
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        connection = self._take_idle() or await self._open()
        reader, writer = connection
        try:
            writer.write(request)
            await writer.drain()
            reply, keep = await _read_reply(reader, max_bytes)
        except BaseException as exc:
            writer.close()  # half-used: never reused
            if isinstance(exc, OSError | asyncio.IncompleteReadError | asyncio.LimitOverrunError | ValueError):
                raise LeanHTTPError(_describe(exc)) from None
            raise
        if keep and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            writer.close()
        return reply

    def close(self) -> None:
        """Closes the idle connections (those in use close when their request ends)."""
        while self._idle:
            self._idle.pop()[1].close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed after {len(exc.partial)} bytes of the response"
    if isinstance(exc, asyncio.LimitOverrunError):
        return f"response headers over {_HEAD_LIMIT} bytes"
    return f"{type(exc).__name__}: {exc}"


async def _read_reply(reader: asyncio.StreamReader, max_bytes: int) -> tuple[Reply, bool]:
    """One response, and whether the connection can carry another."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader, max_bytes)
    elif "content-length" in headers:
        declared = headers["content-length"]
        if not declared.isdigit():
            raise ValueError(f"bad Content-Length {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise ValueError(f"response of {declared} bytes is over {max_bytes}")
        body = await reader.readexactly(int(declared))
    else:  # the body runs to the end of the connection
        body = await _read_to_eof(reader, max_bytes)
        keep = False
    return Reply(int(code), headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    chunks, size = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        length_text = line.split(b";", 1)[0].strip()
        if not length_text or len(length_text) > 16:
            raise ValueError(f"bad chunk size {line[:40]!r}")
        length = int(length_text, 16)
        if length == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        size += length
        if size > max_bytes:
            raise ValueError(f"response is over {max_bytes} bytes")
        chunks.append(await reader.readexactly(length))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")


async def _read_to_eof(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    chunks, size = [], 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"response is over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
