"""The ``metapo serve-judge`` subcommand: an in-process judge model behind an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``serve-judge`` to a ``metapo`` argument parser.

    The handler is stored as ``func`` in the parsed namespace and returns an exit code.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The subcommand's parser.
    """
    parser = subparsers.add_parser(
        "serve-judge",
        help="serve a judge model over an OpenAI-compatible HTTP API",
        description=(
            "Load a judge model in this process and serve POST /v1/chat/completions, GET /v1/models and "
            "GET /health, so that training and evaluation reach it like any remote judge server "
            "(point a judge config's base_urls at the printed address)."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=("xllamacpp", "transformers"),
        default="xllamacpp",
        help="xllamacpp: a GGUF file on CPU/GPU via llama.cpp; transformers: a Hugging Face model (default: %(default)s)",
    )
    parser.add_argument(
        "--gguf",
        default="embedded",
        help="GGUF file for xllamacpp, or 'embedded' for the packaged Qwen2.5-Coder-1.5B-Instruct (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="",
        help="transformers: Hub id or directory to load. Also the model id reported by /v1/models "
        "(default for xllamacpp: the GGUF file name)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--n-ctx", type=int, default=4096, help="xllamacpp context size (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="xllamacpp CPU threads (default: %(default)s)")
    parser.add_argument(
        "--n-parallel", type=int, default=1, help="xllamacpp parallel decoding slots (default: %(default)s)"
    )
    parser.add_argument(
        "--device", default=None, help="transformers device (default: cuda if available, else cpu)"
    )
    parser.set_defaults(func=_serve_judge)
    return parser


def _serve_judge(args: argparse.Namespace) -> int:
    # Heavy imports (torch, xllamacpp) only when the command actually runs.
    from metapo.judges.backends import JudgeConfig, build_backend
    from metapo.judges.server import serve

    cfg = JudgeConfig(
        backend=args.backend,
        model=args.model,
        gguf=args.gguf if args.backend == "xllamacpp" else None,
        device=args.device,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_parallel=args.n_parallel,
    )
    model_id = cfg.resolved_model_id()
    backend = build_backend(cfg)
    try:
        serve(backend, args.host, args.port, model_id=model_id)
    except OSError as exc:  # the address is taken or not ours to bind
        raise ValueError(
            f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port or --host"
        ) from None
    return 0
