"""``metapo serve-reward``: serve a run's evolving-rubric reward over HTTP."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``serve-reward`` command."""
    serve = subparsers.add_parser(
        "serve-reward",
        help="Serve the evolving-rubric reward over HTTP for verl, OpenRLHF and TRL workers.",
        description="Own the rubric reward, window, rubric store and meta steps of one run directory "
        "(output_dir) and score over HTTP. Restarting on the same run directory resumes it. Settings: "
        "--config YAML (a run config plus a service: section), then key=value overrides.",
    )
    serve.add_argument("--config", type=Path, help="YAML run config (see examples/service/essay_service.yaml).")
    serve.add_argument("--host", help="Shortcut for service.host=... (default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Shortcut for service.port=... (0 = any free port).")
    serve.add_argument("--output-dir", help="Shortcut for output_dir=... (the run directory).")
    serve.add_argument("overrides", nargs="*", help="key=value settings that override the YAML.")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from metapo.service.config import load_serve_config

    extra: dict[str, Any] = {"service": {}}
    if args.host is not None:
        extra["service"]["host"] = args.host
    if args.port is not None:
        extra["service"]["port"] = args.port
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    cfg = load_serve_config(args.config, args.overrides, extra)
    token = cfg.service.token()  # a named but empty variable stops here, before anything is written
    sock = _bind(cfg.service.host, cfg.service.port)

    import uvicorn

    from metapo.service.app import create_app
    from metapo.service.state import RewardService

    try:
        service = RewardService.build(cfg)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    if token is None and cfg.service.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a bearer token: anyone who can reach it can score and step", host)
    print(f"metapo reward service on http://{host}:{port} (run directory {cfg.run_dir})", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service, token=token),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(cfg.service.shutdown_wait_s) + 5,
        )
    )
    server.run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming host and port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"service.host={host!r} cannot be resolved ({exc.strerror}); use 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port (0 = any free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


