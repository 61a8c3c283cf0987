"""The lean HTTP/1.1 client of the judge's hot path, against raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from scripted_judge import ScriptedJudge

from metapo.judges import JudgeClient, JudgeError, OpenAIHTTPBackend
from metapo.judges.backends import _lean_route
from metapo.judges.lean_http import LeanConnectionPool, LeanHTTPError

Respond = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def _serve(respond: Respond, scenario: Callable[[LeanConnectionPool, list[int]], Awaitable[None]]) -> list[int]:
    """Runs ``scenario`` against a server whose n-th request on any connection is answered by ``respond``.

    Returns the connection number that served each request (to see reuse).
    """
    served: list[int] = []
    connections = [0]
    requests = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        number = connections[0]
        try:
            while True:
                try:
                    await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                served.append(number)
                requests[0] += 1
                if not await respond(requests[0] - 1, reader, writer):
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = LeanConnectionPool("127.0.0.1", port, connect_timeout_s=2)
    try:
        await scenario(pool, served)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    return served


def _plain(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def _post(pool: LeanConnectionPool, max_bytes: int = 1 << 20) -> bytes:
    reply = await pool.post("/v1/chat/completions", b"{}", {"Content-Type": "application/json"}, max_bytes)
    assert reply.status == 200
    return reply.body


def test_connections_are_kept_alive_and_reused():
    async def respond(i, reader, writer):
        writer.write(_plain(OK))
        await writer.drain()
        return True

    async def scenario(pool, served):
        for _ in range(3):
            assert await _post(pool) == OK

    assert asyncio.run(_serve(respond, scenario)) == [1, 1, 1]


def test_chunked_and_to_the_end_bodies_are_read_whole():
    async def respond(i, reader, writer):
        if i == 0:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            writer.write(head + b"5;ext=1\r\n" + OK[:5] + b"\r\n" + f"{len(OK) - 5:x}\r\n".encode() + OK[5:] + b"\r\n0\r\n\r\n")
            await writer.drain()
            return True
        if i == 1:  # no length: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK)
            await writer.drain()
            return False
        writer.write(_plain(OK))
        await writer.drain()
        return True

    async def scenario(pool, served):
        assert await _post(pool) == OK  # chunked, kept alive
        assert await _post(pool) == OK  # same connection, read to the end, then dropped
        assert await _post(pool) == OK  # ... so a new connection serves this one

    assert asyncio.run(_serve(respond, scenario)) == [1, 1, 2]


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def respond(i, reader, writer):
        writer.write(_plain(OK))
        await writer.drain()
        return False  # answers, then closes the connection: the client must notice before sending again

    async def scenario(pool, served):
        assert await _post(pool) == OK
        await asyncio.sleep(0.05)
        assert await _post(pool) == OK

    assert asyncio.run(_serve(respond, scenario)) == [1, 2]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "connection closed after 0 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "connection closed after 2 bytes"),
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "over 1024"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ValueError"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"x" * 2048, "over 1024"),
    ],
)
def test_broken_responses_are_errors_and_the_connection_is_dropped(answer, message):
    async def respond(i, reader, writer):
        if i == 0:
            writer.write(answer)
            await writer.drain()
            return False
        writer.write(_plain(OK))
        await writer.drain()
        return True

    async def scenario(pool, served):
        with pytest.raises(LeanHTTPError, match=message):
            await _post(pool, max_bytes=1024)
        assert await _post(pool) == OK  # a fresh connection, not the broken one

    assert asyncio.run(_serve(respond, scenario)) == [1, 2]


def test_a_cancelled_request_never_leaves_its_connection_in_the_pool():
    async def respond(i, reader, writer):
        if i == 0:
            await asyncio.sleep(0.3)  # answers after the client gave up
        writer.write(_plain(OK))
        await writer.drain()
        return True

    async def scenario(pool, served):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await _post(pool)
        assert await _post(pool) == OK  # the late answer to the first request is never read as this one's

    assert asyncio.run(_serve(respond, scenario)) == [1, 2]


def test_header_injection_is_refused():
    pool = LeanConnectionPool("127.0.0.1", 9)
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(pool.post("/", b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"}, 1024))


def test_which_urls_take_the_lean_path(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _lean_route("http://127.0.0.1:8000/v1") == ("127.0.0.1", 8000, "/v1")
    assert _lean_route("http://judge.internal/api/v1") == ("judge.internal", 80, "/api/v1")
    assert _lean_route("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert _lean_route("http://judge.internal/v1") is None  # httpx honours the proxy
    monkeypatch.setenv("NO_PROXY", "judge.internal")
    assert _lean_route("http://judge.internal/v1") == ("judge.internal", 80, "/v1")


@pytest.mark.parametrize("lean", [True, False])
def test_both_paths_give_the_same_answers_and_faults(lean):
    with ScriptedJudge(faults=["503", None]) as judge:
        backend = OpenAIHTTPBackend([judge.url], timeout_s=5, lean_http=lean)
        assert (backend._lean_routes[backend.base_urls[0]] is not None) == lean
        client = JudgeClient(backend, model_id="scripted", max_attempts=1, timeout_s=5)
        messages = [{"role": "user", "content": "<response>\none two three\n</response>"}]

        async def go():
            try:
                with pytest.raises(JudgeError, match="HTTP 503"):
                    await client.expected_score(messages, 0, 9)
                return await client.expected_score(messages, 0, 9)
            finally:
                await client.aclose()

        reading = asyncio.run(go())
    assert reading.expected == pytest.approx(3.0)
