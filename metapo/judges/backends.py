"""Judge backends: anything that answers an OpenAI chat-completions request body.

Three implementations share the :class:`Backend` protocol:

* :class:`OpenAIHTTPBackend` talks to any OpenAI-compatible server (vLLM, SGLang, Ollama,
  llama.cpp's ``llama-server``, hosted APIs, or ``metapo serve-judge``).
* :class:`XLlamaCppBackend` runs a GGUF model in-process through ``xllamacpp`` (a prebuilt
  llama.cpp server library).
* :class:`TransformersBackend` runs any Hugging Face causal LM in-process.

Backends only move requests and map failures onto :class:`~metapo.judges.types.TransientJudgeError`
(worth retrying) and :class:`~metapo.judges.types.JudgeError` (not worth it). Retries, timeouts,
concurrency limits, caching and parsing live in :class:`~metapo.judges.client.JudgeClient`.

A backend object may be used from several threads, each running its own event loop (the trainer's
reward loop and the background meta step, for instance), so no backend keeps event-loop-bound state
without keying it by loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import reprlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from metapo.judges.lean_http import LeanConnectionPool, LeanHTTPError
from metapo.judges.types import JudgeError, TransientJudgeError

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

BACKENDS = ("openai", "xllamacpp", "transformers")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

# httpcore scans every connection of a pool (with a socket check each) whenever a request starts or
# ends, so the CPU cost per request grows with the pool's size: at 64 concurrent requests one pool cost
# ~5 ms of CPU per request and capped throughput well below the concurrency limit. Several small pools
# keep it at ~1.7 ms (benchmarks/judge_throughput.py).
_CONNECTIONS_PER_POOL = 8


@runtime_checkable
class Backend(Protocol):
    """What :class:`~metapo.judges.client.JudgeClient` needs from a judge.

    Attributes:
        name: Short name used in logs and metrics.
        supports_json_schema: Whether ``response_format`` of type ``json_schema`` is enforced.
        supports_logprobs: Whether ``logprobs``/``top_logprobs`` are returned.

    A backend may also set ``finite_responses = True`` when its answers are already free of NaN and infinity
    and depth-checked (:func:`parse_json_response` does both); the client then skips its own pass over them.
    """

    name: str
    supports_json_schema: bool
    supports_logprobs: bool

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answers one OpenAI chat-completions request body with the OpenAI response dict.

        Raises:
            TransientJudgeError: Timeout, HTTP 429/5xx, dropped connection, malformed response.
            JudgeError: A request the judge rejects (HTTP 4xx other than 408/429).
        """
        ...

    async def aclose(self) -> None:
        """Releases the backend's resources; call once, when no thread will use it again.

        Resources tied to one event loop (an HTTP connection pool) are also released on their own
        when ``asyncio.run`` shuts that loop down, so threads that come and go need not call this.
        """
        ...


# A chat completion with top logprobs for a thousand tokens is about 2 MB; a server that sends more is broken.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Deeper nesting than any chat completion has; the JSON parser itself stops near 1000 levels with an error.
MAX_RESPONSE_DEPTH = 64
_PREVIEW = reprlib.Repr()  # a bounded preview of any response, however large or deep
_PREVIEW.maxstring = _PREVIEW.maxother = 200
_PREVIEW.maxlevel, _PREVIEW.maxlist, _PREVIEW.maxdict = 3, 6, 6


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (raw or JSON-escaped) replaced by ``[REDACTED]``."""
    if not secret:
        return text
    for form in {secret, json.dumps(secret)[1:-1], secret.replace("/", "\\/")}:
        text = text.replace(form, "[REDACTED]")
    return text


def parse_json_response(text: str) -> Any:
    """A server's JSON answer, with NaN, Infinity and numbers too large for a float read as ``null``.

    Such values are not JSON; left in, they would poison arithmetic and could not be stored in the response
    cache. Raises ``ValueError`` for text that is not JSON or nests deeper than :data:`MAX_RESPONSE_DEPTH`.
    """

    def finite(literal: str) -> float | None:
        value = float(literal)
        return value if math.isfinite(value) else None

    try:
        value = json.loads(text, parse_constant=lambda _: None, parse_float=finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    check_depth(value)
    return value


def check_depth(value: Any, limit: int = MAX_RESPONSE_DEPTH) -> None:
    """Raise ``ValueError`` when containers nest deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                raise ValueError(f"nested deeper than {limit} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


async def _read_capped(response: Any, url: str) -> bytes:
    """The body of a streamed httpx response, refusing one over :data:`MAX_RESPONSE_BYTES`."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise TransientJudgeError(f"{url}: response of {declared} bytes is over {MAX_RESPONSE_BYTES}")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TransientJudgeError(f"{url}: response is over {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_response(response: Any, where: str) -> dict[str, Any]:
    """Checks that a chat-completions response has a readable first choice.

    Args:
        response: The decoded response.
        where: Backend/URL, for the error message.

    Returns:
        ``response`` itself.

    Raises:
        TransientJudgeError: When the shape is not that of a chat completion.
    """
    if isinstance(response, dict) and "error" in response and "choices" not in response:
        raise TransientJudgeError(f"{where}: error in response body: {_PREVIEW.repr(response['error'])}")
    try:
        choice = response["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
    except (KeyError, IndexError, TypeError) as exc:
        raise TransientJudgeError(
            f"{where}: malformed chat completion ({exc!r}): {_PREVIEW.repr(response)}"
        ) from None
    return response


def normalize_base_url(url: str) -> str:
    """The API root that ``/chat/completions`` is appended to.

    A bare server address (``http://host:8000``) gets ``/v1`` appended; any URL with a path is used as
    given, as the OpenAI SDK does (``http://host:8000/v1``, ``https://api.example.com/openai/v1``).
    Trailing slashes are dropped.

    Args:
        url: A server address or API root.

    Returns:
        The API root without a trailing slash.
    """
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # A key in the URL would be written to config.yaml and shown in error messages; it is not repeated here.
        raise ValueError(
            "judge base URL must not hold credentials (user:key@host); put the key in an environment variable "
            "and name it in judge.api_key_env"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"judge base URL must look like http(s)://host[:port][/path], got {url!r}")
    return url if parts.path else url + "/v1"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare for APIs; the client's own backoff applies.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class OpenAIHTTPBackend:
    """An OpenAI-compatible chat-completions server, or several replicas of one.

    Requests go round-robin over ``base_urls``, so a retry after a failure usually lands on another
    replica. The API key is read from the environment variable ``api_key_env`` at every call; it is
    never stored on the object, logged or put in an error message.

    ``httpx.AsyncClient`` binds its connection pool to the event loop that first used it, so clients
    are kept per running loop: several small ones, used in turn (see ``_CONNECTIONS_PER_POOL``). A
    loop's clients are closed when ``asyncio.run`` shuts that loop down (through an async-generator
    finaliser, which ``asyncio.run`` always runs), by :meth:`aclose` called on that loop, or dropped
    once the loop is found closed.

    Args:
        base_urls: Server addresses or API roots (see :func:`normalize_base_url`).
        api_key_env: Name of the environment variable holding the API key (``None``: send none).
        timeout_s: HTTP timeout per request.
        supports_json_schema: Whether the server enforces ``response_format`` JSON schemas
            (vLLM, SGLang, llama.cpp, Ollama and most hosted APIs do).
        supports_logprobs: Whether the server returns ``top_logprobs``.
        max_connections: Connections per event loop, over all its pools.
        name: Name in logs.
        lean_http: Send to ``http://`` servers that no proxy setting covers through the lean HTTP/1.1
            client of :mod:`metapo.judges.lean_http` (a fraction of httpx's CPU per request); ``https://``
            and proxied servers always go through httpx.
    """

    # Answers come from parse_json_response (no NaN or infinity, depth checked), so the client need not walk
    # them again.
    finite_responses = True

    def __init__(
        self,
        base_urls: list[str] | str,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        *,
        supports_json_schema: bool = True,
        supports_logprobs: bool = True,
        max_connections: int = 256,
        name: str = "openai",
        lean_http: bool = True,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("OpenAIHTTPBackend needs at least one base URL")
        self.base_urls = [normalize_base_url(u) for u in urls]
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.supports_json_schema = supports_json_schema
        self.supports_logprobs = supports_logprobs
        self.max_connections = max_connections
        self.name = name
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._ssl_context: Any = None  # built once and shared by every loop's client (loading CAs is slow)
        self._pool_counter = itertools.count()
        # loop -> (clients, finaliser generator); see the class docstring.
        self._clients: dict[
            asyncio.AbstractEventLoop, tuple[list[httpx.AsyncClient], AsyncIterator[None]]
        ] = {}
        # Per base URL: (host, port, path prefix) when it goes through the lean client, else None.
        self._lean_routes = {url: _lean_route(url) if lean_http else None for url in self.base_urls}
        self._lean_pools: dict[
            asyncio.AbstractEventLoop, tuple[dict[tuple[str, int], LeanConnectionPool], AsyncIterator[None]]
        ] = {}

    def __repr__(self) -> str:
        return f"OpenAIHTTPBackend(base_urls={self.base_urls!r}, api_key_env={self.api_key_env!r})"

    def _next_url(self) -> str:
        with self._lock:
            index = next(self._counter)
        return self.base_urls[index % len(self.base_urls)]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"environment variable {self.api_key_env} (the judge API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _client(self) -> httpx.AsyncClient:
        import httpx

        loop = asyncio.get_running_loop()
        with self._lock:
            turn = next(self._pool_counter)
            entry = self._clients.get(loop)
            if entry is not None:
                return entry[0][turn % len(entry[0])]
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            per_pool = min(self.max_connections, _CONNECTIONS_PER_POOL)
            clients = [
                httpx.AsyncClient(
                    verify=self._ssl_context,
                    timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                    limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                )
                for _ in range(-(-self.max_connections // per_pool))
            ]
            finaliser = _close_on_loop_shutdown(clients)
            self._clients[loop] = (clients, finaliser)
        # Starting the generator registers it with this loop; asyncio.run finalises it (closing the
        # clients) before closing the loop.
        await finaliser.__anext__()
        return clients[turn % len(clients)]

    async def _post_httpx(
        self, url: str, body: dict[str, Any], headers: dict[str, str], secret: str
    ) -> tuple[int, str | None, bytes]:
        import httpx

        client = await self._client()
        try:
            async with client.stream("POST", url, json=body, headers=headers) as response:
                return response.status_code, response.headers.get("retry-after"), await _read_capped(response, url)
        except httpx.TimeoutException:
            raise TransientJudgeError(f"{url}: no response within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise TransientJudgeError(redact(f"{url}: {type(exc).__name__}: {exc}", secret)) from None

    async def _lean_pool(self, host: str, port: int) -> LeanConnectionPool:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._lean_pools.get(loop)
            if entry is None:
                for stale in [other for other in self._lean_pools if other.is_closed()]:
                    del self._lean_pools[stale]
                pools: dict[tuple[str, int], LeanConnectionPool] = {}
                entry = (pools, _close_lean_on_loop_shutdown(pools))
                self._lean_pools[loop] = entry
                fresh = True
            else:
                fresh = False
            pool = entry[0].get((host, port))
            if pool is None:
                pool = entry[0][(host, port)] = LeanConnectionPool(
                    host, port, connect_timeout_s=min(self.timeout_s, 10.0), max_idle=self.max_connections
                )
        if fresh:
            await entry[1].__anext__()  # registers the finaliser with this loop (see _client)
        return pool

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Posts ``body`` to ``{base_url}/chat/completions`` (see :class:`Backend`).

        The body is read up to :data:`MAX_RESPONSE_BYTES`; the API key's value is replaced by ``[REDACTED]``
        in every error message and in the answer itself, even when the server echoes it back.
        """
        headers = self._headers()
        secret = headers.get("Authorization", "").removeprefix("Bearer ")
        base = self._next_url()
        url = base + "/chat/completions"
        route = self._lean_routes[base]
        if route is not None:
            host, port, prefix = route
            encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            pool = await self._lean_pool(host, port)
            try:
                reply = await pool.post(prefix + "/chat/completions", encoded, headers, MAX_RESPONSE_BYTES)
            except LeanHTTPError as exc:
                raise TransientJudgeError(redact(f"{url}: {exc}", secret)) from None
            status, retry_after, data = reply.status, reply.headers.get("retry-after"), reply.body
        else:
            status, retry_after, data = await self._post_httpx(url, body, headers, secret)
        text = redact(data.decode("utf-8", "replace"), secret)
        if status in (408, 429) or status >= 500:
            raise TransientJudgeError(
                f"{url}: HTTP {status}: {text[:300]}", retry_after_s=_retry_after(retry_after)
            )
        if status >= 400:
            raise JudgeError(f"{url}: HTTP {status}: {text[:500]}")
        try:
            payload = parse_json_response(text)
        except ValueError as exc:
            raise TransientJudgeError(f"{url}: response is not JSON ({exc}): {text[:200]!r}") from None
        return check_response(payload, url)

    async def aclose(self) -> None:
        """Closes the calling loop's connection pool and forgets pools of closed loops.

        Pools of loops still running in other threads are left to those loops' shutdown.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.pop(loop, None)
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            lean = self._lean_pools.pop(loop, None)
        if lean is not None:
            for pool in lean[0].values():
                pool.close()
        if entry is not None:
            for client in entry[0]:
                await client.aclose()


def _lean_route(url: str) -> tuple[str, int, str] | None:
    """``(host, port, path)`` of an ``http://`` API root that no proxy environment variable covers, else None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    proxies = getproxies_environment()
    if ("http" in proxies or "all" in proxies) and not proxy_bypass_environment(parts.hostname, proxies):
        return None  # httpx honours the proxy settings; the lean client does not speak to proxies
    return parts.hostname, parts.port or 80, parts.path


async def _close_lean_on_loop_shutdown(pools: dict[tuple[str, int], LeanConnectionPool]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for pool in pools.values():
            pool.close()


async def _close_on_loop_shutdown(clients: list[httpx.AsyncClient]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for client in clients:
            await client.aclose()


class XLlamaCppBackend:
    """A GGUF model served in-process by ``xllamacpp`` (llama.cpp's server as a Python library).

    The model loads in the constructor. Requests run in a private thread pool (one thread per
    parallel slot): ``xllamacpp`` releases the GIL while it computes, so the event loop stays free,
    and the pool is not shared with ``asyncio.to_thread`` users. Chat completions return
    ``logprobs.content[i].top_logprobs`` and honour ``response_format`` JSON schemas (checked with
    xllamacpp 2026.10.11549).

    Args:
        gguf_path: The GGUF model file.
        n_ctx: Context size in tokens, shared by all parallel slots.
        n_threads: CPU threads for generation and prompt processing.
        n_parallel: Parallel decoding slots. On a CPU-bound box more slots batch requests together
            but barely raise throughput (see the benchmarks); on a GPU they matter.
        name: Name in logs.
    """

    supports_json_schema = True
    supports_logprobs = True

    def __init__(
        self,
        gguf_path: str | os.PathLike[str],
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_parallel: int = 1,
        *,
        name: str = "xllamacpp",
    ) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise ImportError(
                "XLlamaCppBackend needs the 'xllamacpp' package: pip install xllamacpp "
                "(it is part of metapo's 'demo' and 'dev' extras)"
            ) from exc
        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {path}")
        self.name = name
        self.gguf_path = path
        self.n_parallel = max(1, int(n_parallel))
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = int(n_ctx)
        params.n_parallel = self.n_parallel
        # Without a unified KV cache every slot gets only n_ctx / n_parallel tokens of context.
        params.kv_unified = True
        params.cpuparams.n_threads = int(n_threads)
        params.cpuparams_batch.n_threads = int(n_threads)
        params.verbosity = -1
        started = time.perf_counter()
        self._server: Any = xllamacpp.Server(params)
        logger.info(
            "xllamacpp loaded %s in %.1f s (n_ctx=%d, n_parallel=%d)",
            path.name,
            time.perf_counter() - started,
            n_ctx,
            self.n_parallel,
        )
        self._pool = ThreadPoolExecutor(max_workers=self.n_parallel, thread_name_prefix="xllamacpp")

    def __repr__(self) -> str:
        return f"XLlamaCppBackend({str(self.gguf_path)!r}, n_parallel={self.n_parallel})"

    def count_tokens(self, text: str) -> int:
        """Exact token count of ``text`` with the model's own tokenizer (read from the GGUF once, cached)."""
        if getattr(self, "_tokenizer", None) is None:
            from metapo.models.embedded import gguf_tokenizer

            self._tokenizer = gguf_tokenizer(self.gguf_path)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _call(self, body: dict[str, Any]) -> dict[str, Any]:
        server = self._server
        if server is None:
            raise JudgeError("XLlamaCppBackend is closed")
        return server.handle_chat_completions(body)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answers ``body`` with the in-process llama.cpp server (see :class:`Backend`)."""
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._pool, self._call, body)
        except JudgeError:
            raise
        except ValueError as exc:
            # xllamacpp raises ValueError for requests it cannot accept (bad messages, bad schema).
            raise JudgeError(f"{self.name}: request rejected: {exc}") from None
        except RuntimeError as exc:
            raise TransientJudgeError(f"{self.name}: {exc}") from None
        if isinstance(response, dict) and isinstance(response.get("error"), dict):
            error = response["error"]
            code = int(error.get("code") or 500)
            message = f"{self.name}: error {code}: {error.get('message', '')[:300]}"
            if code in (408, 429) or code >= 500:
                raise TransientJudgeError(message)
            raise JudgeError(message)
        return check_response(response, self.name)

    async def aclose(self) -> None:
        """Frees the model once running requests finish."""
        self._pool.shutdown(wait=False)
        self._server = None


class TransformersBackend:
    """Any Hugging Face causal LM, in-process, speaking the chat-completions format.

    The chat template is applied, generation is greedy at temperature 0 and sampled otherwise,
    ``stop`` strings cut the text, and with ``logprobs`` the raw (untempered) top log-probabilities of
    every generated token are returned. JSON schemas are not enforced (``supports_json_schema`` is
    False, so the client asks for JSON in the prompt and parses it). Requests run one at a time in a
    private thread.

    Args:
        model_name_or_path: Hub id or local directory (ignored when ``model`` is given).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        model: An already loaded model to use instead of loading one.
        tokenizer: Its tokenizer (required with ``model``).
        dtype: Torch dtype for loading (default: float32 on CPU, where bf16 is slow without AMX;
            the checkpoint's own dtype on GPU).
        gguf_file: Load this GGUF file from ``model_name_or_path`` (dequantised by transformers).
        name: Name in logs.
    """

    supports_json_schema = False
    supports_logprobs = True

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        device: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        dtype: Any = None,
        gguf_file: str | None = None,
        name: str = "transformers",
    ) -> None:
        import torch

        self.name = name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            if model_name_or_path is None:
                raise ValueError("TransformersBackend needs model_name_or_path or model")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
            if dtype is None:
                dtype = torch.float32 if self.device == "cpu" else "auto"
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
        elif tokenizer is None:
            raise ValueError("TransformersBackend(model=...) also needs tokenizer=...")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {model_name_or_path or type(model).__name__} has no chat template"
            )
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model_id = str(model_name_or_path or getattr(model, "name_or_path", "") or type(model).__name__)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-judge")
        self._warned_schema = False

    def __repr__(self) -> str:
        return f"TransformersBackend({self.model_id!r}, device={self.device!r})"

    def count_tokens(self, text: str) -> int:
        """Exact token count of ``text`` with the model's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Generates an answer to ``body`` (see :class:`Backend`)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._generate, body)
        except (KeyError, TypeError, ValueError) as exc:
            raise JudgeError(f"{self.name}: bad request: {exc}") from None

    def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch
        from transformers import GenerationConfig

        if body.get("stream"):
            raise ValueError("streaming is not supported")
        if int(body.get("n", 1)) != 1:
            raise ValueError("only n=1 is supported")
        if body.get("response_format") and not self._warned_schema:
            logger.warning(
                "%s does not enforce response_format; the model's text is returned as is", self.name
            )
            self._warned_schema = True
        tok = self.tokenizer
        inputs = tok.apply_chat_template(
            list(body["messages"]), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        prompt_len = int(inputs["input_ids"].shape[1])
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
        temperature = float(body.get("temperature", 1.0))
        want_logprobs = bool(body.get("logprobs"))
        n_top = min(int(body.get("top_logprobs") or 0), 20) if want_logprobs else 0
        base = self.model.generation_config
        eos = base.eos_token_id if base.eos_token_id is not None else tok.eos_token_id
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=float(body.get("top_p", 1.0)) if temperature > 0 else None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
            return_dict_in_generate=True,
            output_logits=want_logprobs,
        )
        seed = body.get("seed")
        # fork_rng: a judge living in the training process must not shift the trainer's RNG stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            if seed is not None:
                torch.manual_seed(int(seed))
            with torch.inference_mode():
                out = self.model.generate(**inputs, generation_config=config)
        ids = out.sequences[0, prompt_len:].tolist()
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        finish = "length"
        if ids and ids[-1] in eos_ids:
            ids, finish = ids[:-1], "stop"
        pieces = [tok.decode([i], skip_special_tokens=False) for i in ids]
        text = tok.decode(ids, skip_special_tokens=True)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        cut = min((p for p in (text.find(s) for s in stops if s) if p >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            # Keep logprobs only for the tokens that produced the kept text.
            kept, length = 0, 0
            while kept < len(pieces) and length < cut:
                length += len(pieces[kept])
                kept += 1
            ids, pieces = ids[:kept], pieces[:kept]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        if want_logprobs:
            content = []
            for step, (token_id, piece) in enumerate(zip(ids, pieces, strict=True)):
                logprobs = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = {
                    "token": piece,
                    "logprob": float(logprobs[token_id]),
                    "bytes": list(piece.encode()),
                    "top_logprobs": [],
                }
                if n_top:
                    values, indices = torch.topk(logprobs, n_top)
                    for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                        alt = tok.decode([index], skip_special_tokens=False)
                        entry["top_logprobs"].append(
                            {"token": alt, "logprob": value, "bytes": list(alt.encode())}
                        )
                content.append(entry)
            choice["logprobs"] = {"content": content}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_len,
                "completion_tokens": len(ids),
                "total_tokens": prompt_len + len(ids),
            },
        }

    async def aclose(self) -> None:
        """Stops the worker thread (the model is freed with the object)."""
        self._pool.shutdown(wait=False)


@dataclass
class JudgeConfig:
    """Where a judge runs and how it is called: the settings behind :func:`build_judge`."""

    backend: str = field(
        default="openai",
        metadata={
            "help": "Judge backend: 'openai' (any OpenAI-compatible server), 'xllamacpp' (in-process "
            "GGUF) or 'transformers' (in-process Hugging Face model)."
        },
    )
    model: str = field(
        default="",
        metadata={
            "help": "Model id sent to the server and used in the cache key. For 'transformers' the Hub id "
            "or directory to load. Empty for 'xllamacpp' means the GGUF file name."
        },
    )
    base_urls: list[str] = field(
        default_factory=lambda: ["http://127.0.0.1:8000/v1"],
        metadata={
            "help": "OpenAI-compatible server addresses; requests are spread round-robin. A bare "
            "http://host:port gets /v1 appended; a URL with a path is used as given."
        },
    )
    api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of the environment variable holding the API key (the key itself never "
            "goes in a config file)."
        },
    )
    json_schema: bool = field(
        default=True,
        metadata={
            "help": "Whether the 'openai' server enforces response_format JSON schemas; if not, JSON is "
            "requested in the prompt and parsed."
        },
    )
    logprobs: bool = field(
        default=True,
        metadata={
            "help": "Whether the 'openai' server returns top_logprobs; if not, scores are parsed from "
            "generated text."
        },
    )
    gguf: str | None = field(
        default=None,
        metadata={
            "help": "GGUF file for 'xllamacpp', or 'embedded' for the packaged Qwen2.5-Coder-1.5B-Instruct."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "Device for 'transformers' (default: cuda when available, else cpu)."}
    )
    n_ctx: int = field(default=4096, metadata={"help": "Context size in tokens for 'xllamacpp'."})
    n_threads: int = field(default=2, metadata={"help": "CPU threads for 'xllamacpp'."})
    n_parallel: int = field(default=1, metadata={"help": "Parallel decoding slots for 'xllamacpp'."})
    max_concurrency: int = field(default=8, metadata={"help": "Most judge requests in flight at once."})
    lean_http: bool = field(
        default=True,
        metadata={
            "help": "Send to http:// servers (no proxy) through metapo's lean HTTP/1.1 client, a fraction of "
            "httpx's CPU per request; false: always httpx. https and proxied servers always use httpx."
        },
    )
    background_concurrency: int = field(
        default=0,
        metadata={
            "help": "0: meta-step requests share the max_concurrency slots and wait behind every queued reward "
            "request; N > 0: they get N slots of their own (for a server that decodes several requests at once, "
            "e.g. xllamacpp with n_parallel >= max_concurrency + N), so they never hold a slot a reward waits for."
        },
    )
    max_requests_per_minute: float | None = field(
        default=None, metadata={"help": "Pace requests to at most this many per minute (None: no limit)."}
    )
    timeout_s: float = field(default=120.0, metadata={"help": "Timeout of one judge request, in seconds."})
    max_attempts: int = field(
        default=4,
        metadata={"help": "Attempts per judge call (timeouts, 429/5xx and unreadable answers are retried)."},
    )
    cache_path: str | None = field(
        default=None, metadata={"help": "SQLite file caching judge responses (None: no cache)."}
    )
    min_logprob_mass: float = field(
        default=0.5,
        metadata={
            "help": "Least probability the judge's first answer token must put on the allowed scores for an "
            "expected score to count (else the answer is unreadable and retried, then missing)."
        },
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"judge backend must be one of {BACKENDS}, got {self.backend!r}")
        if isinstance(self.base_urls, str):
            self.base_urls = [u for u in self.base_urls.split(",") if u.strip()]
        for url in self.base_urls:
            normalize_base_url(url)  # checked now, before a config holding it is written
        if self.max_concurrency < 1 or self.max_attempts < 1 or self.n_parallel < 1:
            raise ValueError("max_concurrency, max_attempts and n_parallel must be >= 1")
        if self.background_concurrency < 0:
            raise ValueError(f"background_concurrency must be >= 0, got {self.background_concurrency}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # The value is not repeated: it may be the key itself, put where its variable's name belongs.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable holding the key (letters, digits and _, "
                "e.g. OPENAI_API_KEY), never the key itself"
            )
        if not 0.0 < self.min_logprob_mass <= 1.0:
            raise ValueError("min_logprob_mass must be in (0, 1]")

    def resolved_model_id(self) -> str:
        """The model id used in requests and cache keys."""
        if self.model:
            return self.model
        if self.backend == "xllamacpp" and self.gguf:
            return (
                "embedded:qwen2.5-coder-1.5b-instruct-q4_k_m"
                if self.gguf == "embedded"
                else Path(self.gguf).name
            )
        raise ValueError(f"judge backend {self.backend!r} needs 'model' to be set")


def resolve_gguf(gguf: str | None) -> Path:
    """The GGUF file named by a config value (``"embedded"``: the packaged 1.5B judge)."""
    if not gguf:
        raise ValueError("the 'xllamacpp' judge backend needs 'gguf' (a file path, or 'embedded')")
    if gguf == "embedded":
        from metapo.models.embedded import qwen_coder_1_5b_gguf

        return Path(qwen_coder_1_5b_gguf())
    return Path(gguf).expanduser()


def build_backend(cfg: JudgeConfig) -> Backend:
    """The backend described by ``cfg`` (in-process models are loaded now)."""
    if cfg.backend == "openai":
        return OpenAIHTTPBackend(
            cfg.base_urls,
            cfg.api_key_env,
            cfg.timeout_s,
            supports_json_schema=cfg.json_schema,
            supports_logprobs=cfg.logprobs,
            lean_http=cfg.lean_http,
        )
    if cfg.backend == "xllamacpp":
        return XLlamaCppBackend(resolve_gguf(cfg.gguf), cfg.n_ctx, cfg.n_threads, cfg.n_parallel)
    if not cfg.model:
        raise ValueError("the 'transformers' judge backend needs 'model' (a Hub id or directory)")
    return TransformersBackend(cfg.model, cfg.device)
