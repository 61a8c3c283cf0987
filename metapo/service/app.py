"""The HTTP face of :class:`~metapo.service.state.RewardService` (Starlette; served by uvicorn).

Endpoints: ``POST /v1/score`` (native), ``POST /v1/openrlhf`` (also ``/get_reward``: OpenRLHF's remote reward
contract), ``POST /v1/reward`` (generic ``{"prompt", "response", "label"}``), ``POST /v1/step`` (trainer step
boundary), ``GET /v1/rubric``, ``GET /healthz`` and Prometheus ``GET /metrics``. Everything but ``/healthz``
needs the bearer token when one is configured.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metapo.service import contracts
from metapo.service.contracts import BadRequest
from metapo.service.state import RewardService, UnknownLineageError

log = logging.getLogger(__name__)

Handler = Callable[[Request, Any], Awaitable[Any]]


class _StateCollector:
    """Values read from the service at scrape time (versions, window, meta steps, judge counters)."""

    def __init__(self, service: RewardService) -> None:
        self.service = service

    def collect(self) -> Any:
        svc = self.service
        ctl = svc.controller
        versions = GaugeMetricFamily("metapo_rubric_version", "Rubric version in force", labels=["lineage"])
        for lineage, number in sorted(ctl.rubrics.versions().items()):
            versions.add_metric([lineage], number)
        yield versions
        yield GaugeMetricFamily("metapo_window_samples", "Samples waiting for the next meta step", value=ctl.pending_samples)
        yield GaugeMetricFamily("metapo_meta_running", "Whether a meta step is running", value=float(ctl.running))
        yield GaugeMetricFamily("metapo_judge_up", "0 while the judge looks down", value=0.0 if svc.judge_down else 1.0)
        for name in ("meta_steps", "accepted", "rejected", "unchanged"):
            yield CounterMetricFamily(f"metapo_meta_{name}", f"Meta steps: {name}", value=getattr(ctl, name))
        yield CounterMetricFamily("metapo_samples_scored", "Samples scored", value=svc.counters.samples)
        yield CounterMetricFamily("metapo_samples_failed", "Samples the judge could not score", value=svc.counters.failed)
        yield CounterMetricFamily("metapo_samples_gated", "Samples decided by a rule gate", value=svc.counters.gated)
        fallbacks = CounterMetricFamily(
            "metapo_fallback_rewards", "Judge failures answered with service.fallback_reward", labels=["engine"]
        )
        for engine, n in sorted(svc.counters.fallbacks.items()):
            fallbacks.add_metric([engine], n)
        yield fallbacks
        for prefix, client in ctl.judges.items():
            for key, value in client.stats.as_metrics(prefix).items():
                name = "metapo_" + key.replace("/", "_")
                yield GaugeMetricFamily(name, f"Judge client counter {key}", value=float(value))


def create_app(service: RewardService, *, token: str | None = None) -> Starlette:
    """The ASGI application serving ``service`` (``token``: the bearer token every request must carry)."""
    settings = service.settings
    registry = CollectorRegistry(auto_describe=True)
    requests_total = Counter(
        "metapo_requests", "HTTP requests", ["endpoint", "status"], registry=registry
    )
    latency = Histogram(
        "metapo_request_seconds",
        "Request handling time",
        ["endpoint"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        registry=registry,
    )
    staleness = Histogram(
        "metapo_reward_staleness_versions",
        "Rubric versions between a consumed reward's version and the one in force when the trainer used it",
        buckets=(0, 1, 2, 3, 5, 10),
        registry=registry,
    )
    in_flight = Gauge("metapo_requests_in_flight", "Requests being handled", registry=registry)
    registry.register(_StateCollector(service))
    busy = {"n": 0}
    expected = f"Bearer {token}".encode() if token else None

    def endpoint(name: str, fn: Handler, *, scoring: bool = False, public: bool = False) -> Callable:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            status = 500
            try:
                if expected is not None and not public:
                    sent = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(sent, expected):
                        status = 401
                        return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                if scoring and busy["n"] >= settings.max_concurrent_requests:
                    status = 503
                    return _error(
                        503,
                        f"{busy['n']} requests already being scored (service.max_concurrent_requests); retry",
                        {"Retry-After": "1"},
                    )
                busy["n"] += 1
                in_flight.inc()
                try:
                    body = await _read_json(request, settings.max_body_bytes) if request.method == "POST" else None
                    result = await fn(request, body)
                finally:
                    busy["n"] -= 1
                    in_flight.dec()
                response = result if isinstance(result, Response) else JSONResponse(result)
                status = response.status_code
                return response
            except BadRequest as exc:
                status = exc.status
                return _error(exc.status, str(exc))
            except UnknownLineageError as exc:
                status = 400
                return _error(400, str(exc))
            except Exception as exc:  # a bug must answer 500 with a reason, and leave the service up
                log.exception("%s failed", name)
                return _error(500, f"internal error: {type(exc).__name__}: {exc}")
            finally:
                requests_total.labels(name, str(status)).inc()
                latency.labels(name).observe(time.perf_counter() - started)

        return run

    async def score(request: Request, body: Any) -> Any:
        items, options = contracts.parse_native(body, settings.max_batch)
        samples = await service.score(items, step=options["step"], engine=options["engine"])
        if options["on_failure"] == "fallback":
            service.count_fallbacks(options["engine"], samples)
        return {
            "results": contracts.native_response(samples, options, settings.fallback_reward),
            "rubric_versions": service.controller.rubrics.versions(),
            "judge_unavailable": service.judge_down,
        }

    async def openrlhf(request: Request, body: Any) -> Any:
        items = contracts.parse_openrlhf(body, settings.max_batch)
        samples = await service.score(items, step=None, engine="openrlhf")
        service.count_fallbacks("openrlhf", samples)
        return contracts.openrlhf_response(samples, settings.fallback_reward)

    async def generic(request: Request, body: Any) -> Any:
        on_failure = request.query_params.get("on_failure", "null")
        if on_failure not in ("null", "fallback"):
            raise BadRequest("query parameter on_failure must be null or fallback", 400)
        items, many = contracts.parse_generic(body, settings.max_batch)
        samples = await service.score(items, step=None, engine="generic")
        fallback = None
        if on_failure == "fallback":
            service.count_fallbacks("generic", samples)
            fallback = settings.fallback_reward
        out = contracts.generic_response(samples, fallback)
        return out if many else out[0]

    async def step(request: Request, body: Any) -> Any:
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object such as {"step": 12}')
        number = body.get("step")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
            raise BadRequest('"step" must be a non-negative integer')
        run_meta = body.get("run_meta", False)
        if not isinstance(run_meta, bool):
            raise BadRequest('"run_meta" must be true or false')
        consumed = _consumed_versions(body.get("rubric_versions"))
        result = service.step(number, run_meta=run_meta, consumed_versions=consumed)
        for value in result["staleness"]:
            staleness.observe(value)
        return {"meta_started": result["meta_started"], "rubric_versions": service.controller.rubrics.versions()}

    async def rubric(request: Request, body: Any) -> Any:
        lineage = request.query_params.get("lineage")
        try:
            return service.rubric_view(lineage)
        except KeyError:
            known = ", ".join(sorted(service.controller.rubrics.versions())) or "none yet"
            return _error(404, f"no lineage {lineage!r}; lineages: {known}")

    async def health(request: Request, body: Any) -> Any:
        data = service.health()
        return JSONResponse(data, status_code=503 if service.judge_down else 200)

    async def metrics(request: Request, body: Any) -> Any:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.shutdown()

    routes = [
        Route("/v1/score", endpoint("score", score, scoring=True), methods=["POST"]),
        Route("/v1/openrlhf", endpoint("openrlhf", openrlhf, scoring=True), methods=["POST"]),
        Route("/get_reward", endpoint("openrlhf", openrlhf, scoring=True), methods=["POST"]),
        Route("/v1/reward", endpoint("reward", generic, scoring=True), methods=["POST"]),
        Route("/v1/step", endpoint("step", step), methods=["POST"]),
        Route("/v1/rubric", endpoint("rubric", rubric), methods=["GET"]),
        Route("/healthz", endpoint("healthz", health, public=True), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than ``limit`` bytes before reading them all (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes; at most {limit} (service.max_body_bytes)", 413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body over {limit} bytes (service.max_body_bytes)", 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON ({str(exc)[:80]})", 400) from None


def _consumed_versions(value: Any) -> dict[str, list[int]]:
    """``rubric_versions`` of a step report: a list of versions (lineage default) or lineage to list."""
    if value is None:
        return {}
    if isinstance(value, list):
        value = {"default": value}
    if not isinstance(value, dict) or not all(
        isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in v) for v in value.values()
    ):
        raise BadRequest('"rubric_versions" must be a list of integers or an object of lineage to such a list')
    return {str(k): list(v) for k, v in value.items()}
