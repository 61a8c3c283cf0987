"""The judge client: caching, concurrency limits, timeouts, retries, reading scores and JSON.

One :class:`JudgeClient` wraps one backend and is shared by everything that asks that judge: the
reward function in the trainer's event loop and the meta step in a background thread with its own
event loop. All of its state (the concurrency limit, the request pacing, the counters, the cache) is
therefore guarded by thread locks rather than bound to one event loop.

When one judge serves both, reward requests come first: calls made inside :func:`background_requests` (the
meta step makes all of its calls there) wait behind every foreground call queued for a slot, so meta work only
runs between reward calls, and with ``background_concurrency`` it gets slots of its own instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from metapo.judges.backends import Backend, JudgeConfig, build_backend, check_depth
from metapo.judges.cache import ScoreCache
from metapo.judges.parsing import digit_distribution, extract_json, parse_score, validate_json
from metapo.judges.types import ChatRequest, ChatResult, JudgeError, ScoreReading, TransientJudgeError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Priority of a judge call: foreground calls (rewards) are granted a slot before background ones (meta steps).
FOREGROUND, BACKGROUND = 0, 1
_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("metapo_judge_priority", default=FOREGROUND)


@contextlib.contextmanager
def background_requests() -> Iterator[None]:
    """Judge calls made in this block, and in tasks started from it, yield to foreground calls.

    A context variable carries the priority, so it follows the calls through ``asyncio.gather`` and task groups
    but not into other threads: the meta step sets it in its own thread, and the reward in the trainer's thread
    stays in the foreground.
    """
    token = _PRIORITY.set(BACKGROUND)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


@dataclass
class JudgeStats:
    """Counters of one judge client (a snapshot; subtract two with :meth:`since`).

    Attributes:
        calls: Judge calls made (``chat``, ``expected_score``, ``chat_json``).
        cache_hits: Calls answered from the cache.
        requests: Requests sent to the backend (every attempt counts).
        responses: Requests that came back with a response (readable or not).
        retries: Attempts after the first one.
        failures: Calls that ended in :class:`~metapo.judges.types.JudgeError`.
        latency_s: Summed wall time of the requests that came back.
        prompt_tokens: Prompt tokens reported by the backend.
        completion_tokens: Completion tokens reported by the backend.
    """

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    responses: int = 0
    retries: int = 0
    failures: int = 0
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def since(self, earlier: JudgeStats) -> JudgeStats:
        """What happened between ``earlier`` and this snapshot (e.g. during one training step)."""
        return JudgeStats(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)}
        )

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        """Flat metrics for a tracker: the counters plus hit, failure and mean-latency rates."""
        metrics = {f"{prefix}{f.name}": float(getattr(self, f.name)) for f in dataclasses.fields(self)}
        metrics[f"{prefix}cache_hit_rate"] = self.cache_hits / self.calls if self.calls else 0.0
        metrics[f"{prefix}failure_rate"] = self.failures / self.calls if self.calls else 0.0
        metrics[f"{prefix}mean_latency_s"] = self.latency_s / self.responses if self.responses else 0.0
        return metrics


class _Waiter:
    __slots__ = ("loop", "future", "granted", "priority")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], priority: int) -> None:
        self.loop, self.future, self.granted, self.priority = loop, future, False, priority


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Slots:
    """A semaphore that can be shared by coroutines of different event loops in different threads.

    ``asyncio.Semaphore`` belongs to one loop, and a ``threading.Semaphore`` acquired through
    ``to_thread`` would park one worker thread per waiting request. Here waiters wait on a future of
    their own loop; a release hands the slot to the oldest waiter directly (FIFO across loops) and
    wakes it with ``call_soon_threadsafe``.
    """

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._lock = threading.Lock()
        self._free = value
        # One FIFO queue per priority; a freed slot goes to the first waiter of the most urgent queue.
        self._waiters: tuple[collections.deque[_Waiter], ...] = (collections.deque(), collections.deque())

    async def acquire(self, priority: int = FOREGROUND) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not any(self._waiters):
                self._free -= 1
                return
            waiter = _Waiter(loop, loop.create_future(), priority)
            self._waiters[priority].append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._waiters[priority].remove(waiter)
            if granted:  # the slot was handed over just as we were cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            for queue in self._waiters:
                while queue:
                    waiter = queue.popleft()
                    try:
                        waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                    except RuntimeError:  # that waiter's loop is closed; it will never run again
                        continue
                    waiter.granted = True
                    return
            self._free += 1

    @contextlib.asynccontextmanager
    async def held(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class _Pacer:
    """Spaces request starts at least ``60 / per_minute`` seconds apart, across threads and loops."""

    def __init__(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError("max_requests_per_minute must be > 0")
        self._interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    async def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


# What reading a malformed answer can raise (an answer nested past the parser's depth, a number too big).
_UNREADABLE = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError)


def finite_response(response: Any, where: str) -> dict[str, Any]:
    """``response`` with NaN and infinite numbers replaced by ``None``, checked for depth, without recursion.

    In-process backends can return such floats (a ``-inf`` log-probability); they would poison score
    arithmetic and could not be stored in the response cache.

    Raises:
        TransientJudgeError: The response is not a mapping or nests too deeply.
    """
    if not isinstance(response, dict):
        raise TransientJudgeError(f"{where}: response is a {type(response).__name__}, not a JSON object")
    try:
        check_depth(response)
    except ValueError as exc:
        raise TransientJudgeError(f"{where}: malformed response ({exc})") from None
    stack: list[Any] = [response]
    while stack:
        node = stack.pop()
        for key, value in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(value, float) and not math.isfinite(value):
                node[key] = None
            elif isinstance(value, dict | list):
                stack.append(value)
    return response


def result_from_response(
    response: Mapping[str, Any], *, latency_s: float = 0.0, attempts: int = 1, cached: bool = False
) -> ChatResult:
    """Turns an OpenAI chat-completions response into a :class:`ChatResult`.

    Per generated token, the alternatives in ``top_logprobs`` (plus the chosen token itself) are
    collected into a token-text -> log-probability mapping; tokens with the same text (possible with
    byte-level vocabularies) have their probabilities added.

    Raises:
        TransientJudgeError: When the response is malformed.
    """
    try:
        choice = response["choices"][0]
        content = choice["message"].get("content")
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        text = content if isinstance(content, str) else ""
        token_logprobs: list[dict[str, float]] = []
        for entry in (choice.get("logprobs") or {}).get("content") or []:
            alternatives: dict[str, float] = {}
            for alt in [*(entry.get("top_logprobs") or []), entry]:
                token, logprob = alt.get("token"), alt.get("logprob")
                if not isinstance(token, str) or not isinstance(logprob, int | float) or math.isnan(logprob):
                    continue
                if alt is entry and token in alternatives:
                    continue  # the chosen token is normally among its own alternatives
                old = alternatives.get(token)
                alternatives[token] = (
                    logprob if old is None else float(math.log(math.exp(old) + math.exp(logprob)))
                )
            token_logprobs.append(alternatives)
        usage = response.get("usage") or {}
        finish = choice.get("finish_reason")
        return ChatResult(
            text=text,
            finish_reason=finish if isinstance(finish, str) else None,
            token_logprobs=token_logprobs,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency_s,
            attempts=attempts,
            cached=cached,
        )
    except _UNREADABLE as exc:
        raise TransientJudgeError(f"malformed chat completion ({type(exc).__name__}: {exc})") from None


class JudgeClient:
    """Asks one judge for text, expected scores and JSON, robustly.

    Every call goes: cache lookup -> pacing -> concurrency slot -> backend request under a timeout ->
    reading/validation -> cache store. Timeouts, HTTP 429/5xx, dropped connections, malformed
    responses and unreadable answers are retried with exponential backoff and full jitter; after the
    last attempt (or at once, for a request the judge rejects) :class:`JudgeError` is raised. Only
    answers that were read successfully are cached.

    The client is safe to share between threads that each run their own event loop.

    Args:
        backend: Where requests go.
        model_id: Model name sent in requests and used in cache keys.
        cache: Optional persistent response cache (closed by :meth:`aclose`).
        max_concurrency: Most requests this client has in flight at once, over all threads and
            loops (:func:`build_judge` gives every client its own backend, so this is the cap per
            backend).
        timeout_s: Timeout of one backend request.
        max_attempts: Attempts per call.
        backoff_base_s: First retry waits up to this long; each further retry doubles the bound.
        backoff_max_s: Upper bound of a retry wait.
        min_logprob_mass: Least probability the first answer token must put on allowed scores for
            an expected score to count.
        max_requests_per_minute: Optional request pacing.
        background_concurrency: 0: background calls (see :func:`background_requests`) share the
            ``max_concurrency`` slots and are granted one only when no foreground call waits. N > 0: they
            get N slots of their own instead, so a long meta-judge generation never holds a slot a reward
            call waits for (for servers that decode several requests at once, e.g. ``xllamacpp`` with
            ``n_parallel >= max_concurrency + N``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        model_id: str,
        cache: ScoreCache | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        min_logprob_mass: float = 0.5,
        max_requests_per_minute: float | None = None,
        background_concurrency: int = 0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if background_concurrency < 0:
            raise ValueError("background_concurrency must be >= 0")
        self.backend = backend
        self.model_id = model_id
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.min_logprob_mass = min_logprob_mass
        self._slots = _Slots(max_concurrency)
        self._background_slots = _Slots(background_concurrency) if background_concurrency else None
        self._pacer = _Pacer(max_requests_per_minute) if max_requests_per_minute else None
        self._stats = JudgeStats()
        self._stats_lock = threading.Lock()
        # A private generator: jitter must not consume (or depend on) the trainer's global RNG.
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"JudgeClient({self.backend!r}, model_id={self.model_id!r})"

    @property
    def stats(self) -> JudgeStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def _backoff(self, retry: int, error: TransientJudgeError) -> float:
        bound = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1))
        delay = self._rng.uniform(0.0, bound)
        if error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.backoff_max_s))
        return delay

    async def _cache_get(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        try:
            return await asyncio.to_thread(self.cache.get, self.model_id, body)
        except sqlite3.Error as exc:
            logger.warning("judge cache read failed (%s); asking the judge", exc)
            return None

    async def _cache_put(self, body: dict[str, Any], response: dict[str, Any]) -> None:
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.put, self.model_id, body, response)
        except (sqlite3.Error, ValueError, TypeError, RecursionError) as exc:  # not storable: not stored
            logger.warning("judge cache write failed: %s", exc)

    async def _cache_delete(self, body: dict[str, Any]) -> None:
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.delete, self.model_id, body)
        except sqlite3.Error as exc:
            logger.warning("judge cache delete failed: %s", exc)

    async def _send(self, body: dict[str, Any], attempt: int) -> tuple[ChatResult, dict[str, Any]]:
        if self._pacer is not None:
            await self._pacer.wait()
        priority = _PRIORITY.get()
        slots = self._slots
        if priority == BACKGROUND and self._background_slots is not None:
            slots = self._background_slots
        async with slots.held(priority):
            self._count(requests=1)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await self.backend.complete(body)
            except TimeoutError:
                raise TransientJudgeError(
                    f"{self.backend.name}: no answer within {self.timeout_s:g} s"
                ) from None
            latency = time.perf_counter() - started
        if not getattr(self.backend, "finite_responses", False):
            response = finite_response(response, self.backend.name)
        result = result_from_response(response, latency_s=latency, attempts=attempt)
        self._count(
            responses=1,
            latency_s=latency,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        return result, response

    async def _run(self, request: ChatRequest, read: Callable[[ChatResult], T]) -> tuple[T, ChatResult]:
        body = request.body(self.model_id)
        self._count(calls=1)
        cached = await self._cache_get(body)
        if cached is not None:
            try:
                result = result_from_response(cached, cached=True, attempts=0)
                value = read(result)
            except (*_UNREADABLE, JudgeError) as exc:
                # A stored answer that no longer reads (e.g. stricter validation): ask again.
                logger.info("ignoring unreadable cached judge answer: %s", exc)
                await self._cache_delete(body)
            else:
                self._count(cache_hits=1)
                return value, result
        last: TransientJudgeError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if last is not None:
                delay = self._backoff(attempt - 1, last)
                logger.debug(
                    "judge attempt %d/%d failed (%s); retrying in %.2f s",
                    attempt - 1,
                    self.max_attempts,
                    last,
                    delay,
                )
                self._count(retries=1)
                await asyncio.sleep(delay)
            try:
                result, response = await self._send(body, attempt)
            except TransientJudgeError as exc:
                last = exc
                continue
            except JudgeError:  # a rejected request
                self._count(failures=1)
                raise
            except Exception as exc:  # a backend bug: a missing score, like any failure, but logged in full
                self._count(failures=1)
                logger.warning("judge backend %s raised unexpectedly", self.backend.name, exc_info=True)
                raise JudgeError(
                    f"judge {self.model_id!r}: backend error {type(exc).__name__}: {exc}"
                ) from exc
            try:
                value = read(result)
            except JudgeError:  # an answer no retry can fix (e.g. cut at its token cap)
                self._count(failures=1)
                raise
            except _UNREADABLE as exc:  # the answer came back but could not be read
                last = TransientJudgeError(f"unreadable answer: {type(exc).__name__}: {exc}")
                continue
            await self._cache_put(body, response)
            return value, result
        self._count(failures=1)
        logger.warning("judge %s failed after %d attempts: %s", self.model_id, self.max_attempts, last)
        raise JudgeError(
            f"judge {self.model_id!r} failed after {self.max_attempts} attempts: {last}"
        ) from last

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Sends one chat request and returns the answer.

        Raises:
            JudgeError: The judge rejected the request, or every attempt failed.
        """
        _, result = await self._run(request, lambda r: None)
        return result

    async def expected_score(
        self, messages: Sequence[Mapping[str, str]], lo: int, hi: int, *, fallback_max_tokens: int = 8
    ) -> ScoreReading:
        """The judge's expected score in ``[lo, hi]`` (G-Eval style).

        With a backend that returns logprobs, one token is generated at temperature 0 with the top
        20 alternatives; the probabilities of the digit tokens ``lo..hi`` (whitespace stripped) are
        renormalised and averaged. The prompt must make the score the first token of the answer.
        Without logprobs, a short answer is generated and one integer in range is parsed from it.

        Args:
            messages: The judge conversation, ending with the request for a score.
            lo: Lowest score, 0..8.
            hi: Highest score, lo+1..9 (single digits: each score must be one token).
            fallback_max_tokens: Answer length when parsing generated text.

        Returns:
            The reading: expected value, distribution, probability mass on allowed digits, method.

        Raises:
            JudgeError: No logprobs, too little probability on allowed digits (below
                ``min_logprob_mass``), no integer in range, or failed requests, after all attempts.
                Never a silent default score.
        """
        if not (0 <= lo < hi <= 9):
            raise ValueError(f"expected_score needs 0 <= lo < hi <= 9, got lo={lo}, hi={hi}")
        msgs = tuple(dict(m) for m in messages)
        if not self.backend.supports_logprobs:
            request = ChatRequest(messages=msgs, max_tokens=fallback_max_tokens, temperature=0.0)

            def read_generated(result: ChatResult) -> ScoreReading:
                score = parse_score(result.text, lo, hi)
                return ScoreReading(float(score), {score: 1.0}, 1.0, "generated", result)

            reading, _ = await self._run(request, read_generated)
            return reading

        request = ChatRequest(messages=msgs, max_tokens=1, temperature=0.0, top_logprobs=20)

        def read_logprobs(result: ChatResult) -> ScoreReading:
            if not result.token_logprobs or not result.token_logprobs[0]:
                raise ValueError("the judge returned no logprobs")
            distribution, mass = digit_distribution(result.token_logprobs[0], lo, hi)
            if mass < self.min_logprob_mass:
                raise ValueError(
                    f"only {mass:.3f} of the first token's probability is on scores {lo}..{hi} "
                    f"(answer {result.text!r})"
                )
            expected = sum(score * p for score, p in distribution.items())
            return ScoreReading(expected, distribution, mass, "logprobs", result)

        reading, _ = await self._run(request, read_logprobs)
        return reading

    async def chat_json(
        self, messages: Sequence[Mapping[str, str]], schema: dict[str, Any], max_tokens: int = 1024
    ) -> tuple[Any, ChatResult]:
        """Asks for a JSON answer that conforms to ``schema``.

        The schema goes in ``response_format`` when the backend enforces it; otherwise it is appended
        to the last user message and the first JSON value in the answer is parsed. Either way the value
        is validated (types, required keys, enums, integer bounds, lengths; see
        :func:`~metapo.judges.parsing.validate_json`).

        Args:
            messages: The judge conversation.
            schema: A JSON schema.
            max_tokens: Answer length limit.

        Returns:
            ``(value, result)``.

        Raises:
            JudgeError: No valid JSON after all attempts, or failed requests.
        """
        msgs = [dict(m) for m in messages]
        constrained = self.backend.supports_json_schema
        if not constrained:
            instruction = (
                "Reply with one JSON value and nothing else. It must conform to this JSON schema:\n"
                + json.dumps(schema, sort_keys=True)
            )
            if msgs and msgs[-1].get("role") == "user":
                msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{instruction}"
            else:
                msgs.append({"role": "user", "content": instruction})
        request = ChatRequest(
            messages=tuple(msgs),
            max_tokens=max_tokens,
            temperature=0.0,
            json_schema=schema if constrained else None,
        )

        def read_json(result: ChatResult) -> Any:
            if result.finish_reason == "length":
                # The same request would be cut at the same place again: not worth a retry.
                raise JudgeError(
                    f"JSON answer truncated at max_tokens={max_tokens} ({len(result.text)} characters); raise "
                    "the token cap or ask for less"
                )
            value = extract_json(result.text)
            errors = validate_json(value, schema)
            if errors:
                raise ValueError("JSON answer does not match the schema: " + "; ".join(errors[:5]))
            return value

        return await self._run(request, read_json)

    def count_tokens(self, text: str) -> int | None:
        """Exact token count of ``text`` for this judge, or ``None`` when its tokenizer is not at hand."""
        counter = getattr(self.backend, "count_tokens", None)
        return None if counter is None else int(counter(text))

    async def aclose(self) -> None:
        """Releases the backend's resources for this event loop and closes the cache."""
        await self.backend.aclose()
        if self.cache is not None:
            self.cache.close()

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def build_judge(cfg: JudgeConfig) -> JudgeClient:
    """A ready client for the judge described by ``cfg`` (in-process models load now)."""
    model_id = cfg.resolved_model_id()
    backend = build_backend(cfg)
    cache = ScoreCache(cfg.cache_path) if cfg.cache_path else None
    return JudgeClient(
        backend,
        model_id=model_id,
        cache=cache,
        max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s,
        max_attempts=cfg.max_attempts,
        max_requests_per_minute=cfg.max_requests_per_minute,
        min_logprob_mass=cfg.min_logprob_mass,
        background_concurrency=cfg.background_concurrency,
    )
