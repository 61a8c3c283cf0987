"""Test-set generation: one JSONL of responses per model, resumable, with the task's gold fields kept.

Defaults follow the paper's evaluation (spec section 7.1): near-greedy sampling at temperature 0.01 with top-p 1.0,
top-k off and seed 42. ``temperature=0`` switches to pure greedy decoding.

Each output line holds ``id`` and ``row`` (for resuming and for aligning models), ``model``, ``task``, ``split``,
``query`` (the task input), ``prompt`` (the chat messages), ``response``, ``finish_reason`` (``"stop"`` or
``"length"``), ``completion_tokens``, the generation settings, and every gold column of the task row (so
``Task.metric`` can score the file directly).

Resuming: rows whose ``row`` index is already in the file (with the same ``id``) are skipped. Each batch is
appended in one write followed by fsync, so a crash loses at most the batch in flight; a torn last line left by a
crash is cut off before appending.

Backends: Hugging Face ``generate`` with left padding (EOS doubles as the pad token when the tokenizer has none),
or vLLM when it is importable and CUDA is available (``backend="auto"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from metapo.files import append_jsonl

logger = logging.getLogger(__name__)

Backend = Literal["auto", "hf", "vllm"]
# Where a run directory may keep its final policy, most specific first; checkpoints are the fallback.
RUN_MODEL_DIRS = ("final", "model", "policy", "final_model")
RESERVED_KEYS = ("prompt", "task_input")
# Prompt additions that make the "gamed" baseline variants the length-controlled win rate is regularised with.
STYLE_SUFFIXES = {
    "verbose": "Give a long and thorough answer: cover every relevant point in as much detail as you can.",
    "concise": "Answer as briefly as you can while still answering fully.",
}


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, stored with every record so a file says how it was made."""

    temperature: float = 0.01
    top_p: float = 1.0
    max_new_tokens: int = 400
    seed: int = 42
    backend: str = "hf"
    batch_size: int = 8
    prompt_suffix: str | None = None


@dataclass
class GenerationSummary:
    """What one :func:`generate` call did."""

    out_path: Path
    model: str
    total: int
    skipped: int
    generated: int
    seconds: float
    backend: str


# ----- model resolution --------------------------------------------------------------------------------------
def resolve_model(model_path_or_run: str | Path) -> tuple[str, str]:
    """Find the weights to load and a display name.

    Args:
        model_path_or_run: A saved model folder (with ``config.json`` or ``adapter_config.json``), a run
            directory (with ``config.yaml``; its ``final`` model, else its latest ``checkpoints/checkpoint-N``), an
            embedded model name (``embedded:smollm2-135m-instruct``), or a Hub id.

    Returns:
        ``(path_or_id, name)``; the name is the run directory's or the model folder's name.
    """
    if str(model_path_or_run).startswith("embedded:"):
        from metapo.models.embedded import resolve_policy

        return str(resolve_policy(str(model_path_or_run))), str(model_path_or_run).split(":", 1)[1]
    from metapo.files import check_model_spec

    path = Path(check_model_spec(str(model_path_or_run), "--model")).expanduser()
    if not path.exists():
        return str(model_path_or_run), str(model_path_or_run).rstrip("/").split("/")[-1]
    if _is_model_dir(path):
        name = path.name
        if path.name in RUN_MODEL_DIRS:
            name = path.parent.name
        elif path.name.startswith("checkpoint-"):
            run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            name = f"{run.name}@{path.name}"
        return str(path), name
    candidates = [path / d for d in RUN_MODEL_DIRS]
    checkpoints = sorted(
        (
            p
            for p in [*path.glob("checkpoint-*"), *path.glob("checkpoints/checkpoint-*")]
            if p.name.split("-")[-1].isdigit()
        ),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for candidate in [*candidates, *checkpoints]:
        if _is_model_dir(candidate):
            return str(candidate), path.name
    raise FileNotFoundError(
        f"{path} holds no model: expected config.json (a model folder) or, in a run directory, one of "
        f"{', '.join(RUN_MODEL_DIRS)} or checkpoint-N with config.json"
    )


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


# ----- records and resuming ----------------------------------------------------------------------------------
def row_id(row: Mapping[str, Any]) -> str:
    """Stable key of a task row: its ``id`` column, else a hash of the task input and prompt."""
    if row.get("id") not in (None, ""):
        return str(row["id"])
    payload = json.dumps([row.get("task_input"), row.get("prompt")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def repair_jsonl_tail(path: Path) -> int:
    """Cut a torn (unterminated or unparsable) last line off ``path``; returns the bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            keep = start
    if keep == len(data):
        return 0
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("removed a torn last line (%d bytes) from %s", len(data) - keep, path)
    return len(data) - keep


def done_rows(path: Path) -> dict[int, str]:
    """Row index to id for every complete record already in ``path``."""
    from metapo.files import read_jsonl

    out: dict[int, str] = {}
    for record in read_jsonl(path):
        if isinstance(record.get("row"), int):
            out[record["row"]] = str(record.get("id"))
    return out


def render_prompt(
    tokenizer: Any, prompt: str | Sequence[Mapping[str, str]], suffix: str | None = None
) -> str:
    """The text the model sees: the chat template with a generation prompt, or the plain string.

    ``suffix`` is appended to the last user message (or to the plain prompt) after a blank line.
    """
    if isinstance(prompt, str):
        return f"{prompt}\n\n{suffix}" if suffix else prompt
    messages = [dict(m) for m in prompt]
    if suffix:
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last = users[-1] if users else len(messages) - 1
        messages[last]["content"] = f"{messages[last]['content']}\n\n{suffix}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def _record(
    index: int, row: Mapping[str, Any], response: str, finish: str, n_tokens: int, meta: Mapping[str, Any]
) -> dict[str, Any]:
    gold = {k: v for k, v in row.items() if k not in RESERVED_KEYS}
    return {
        **gold,
        "id": row_id(row),
        "row": index,
        "model": meta["model"],
        "task": meta["task"],
        "split": meta["split"],
        "query": row.get("task_input", ""),
        "prompt": row.get("prompt"),
        "response": response,
        "finish_reason": finish,
        "completion_tokens": n_tokens,
        "generation": meta["settings"],
    }


# ----- backends ----------------------------------------------------------------------------------------------
def _want_vllm(backend: Backend) -> bool:
    if backend == "hf":
        return False
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a core dependency
        cuda = False
    try:
        import vllm  # noqa: F401

        have_vllm = True
    except ImportError:
        have_vllm = False
    if backend == "vllm" and not (have_vllm and cuda):
        raise RuntimeError("backend='vllm' needs the vllm package and a CUDA GPU; use backend='hf'")
    return have_vllm and cuda


class _HFGenerator:
    """Batched ``generate`` with left padding."""

    def __init__(self, model_path: str, settings: GenerationSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        tokenizer_path = model_path
        if (Path(model_path) / "adapter_config.json").is_file() and not (
            Path(model_path) / "config.json"
        ).is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(model_path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def __call__(self, prompts: list[str], batch_seed: int) -> list[tuple[str, str, int]]:
        s = self.settings
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        out = sample_batch(
            self.model, self.tokenizer, ids, eos_ids=self.eos_ids, max_new_tokens=s.max_new_tokens,
            temperature=s.temperature, top_p=s.top_p, seed=batch_seed,
        )
        return [(text, "stop" if ended else "length", n) for text, ended, n in out]


def sample_batch(
    model: Any,
    tokenizer: Any,
    input_ids: Sequence[Sequence[int]],
    *,
    eos_ids: Iterable[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[tuple[str, bool, int]]:
    """One batched ``generate`` call on left-padded prompts: ``(text, ended_with_eos, new_tokens)`` per prompt.

    ``temperature = 0`` decodes greedily; otherwise sampling with ``top_p`` and top-k off. The text stops before
    the first EOS token and skips special tokens. The seed is set right before generating, so a batch's output
    does not depend on what ran before it (resumed runs included).
    """
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer.pad({"input_ids": [list(x) for x in input_ids]}, return_tensors="pt").to(device)
    eos = set(eos_ids)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted(eos),
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    with torch.inference_mode():
        generated = model.generate(**enc, **kwargs)
    results = []
    for seq in generated[:, enc["input_ids"].shape[1] :].tolist():
        n, ended = len(seq), False
        for i, token in enumerate(seq):
            if token in eos:
                n, ended = i, True
                break
        results.append((tokenizer.decode(seq[:n], skip_special_tokens=True), ended, n))
    return results


class _VLLMGenerator:
    """vLLM offline inference on the same rendered prompts."""

    def __init__(self, model_path: str, settings: GenerationSettings) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.llm = LLM(model=model_path, seed=settings.seed)
        self.settings = settings
        self.params_cls = SamplingParams

    def __call__(self, prompts: list[str], batch_seed: int) -> list[tuple[str, str, int]]:
        s = self.settings
        params = self.params_cls(
            temperature=s.temperature, top_p=s.top_p, top_k=-1, max_tokens=s.max_new_tokens, seed=batch_seed
        )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            choice = out.outputs[0]
            finish = "length" if choice.finish_reason == "length" else "stop"
            results.append((choice.text, finish, len(choice.token_ids)))
        return results


def make_generator(model_path: str, settings: GenerationSettings) -> Any:
    """A loaded generator, ``generator(rendered_prompts, seed) -> [(text, finish_reason, n_tokens)]``.

    ``settings.backend`` picks it: ``"vllm"``, ``"hf"``, or ``"auto"`` (vLLM when importable with CUDA). The
    generator's ``tokenizer`` renders prompts (:func:`render_prompt`).
    """
    return (_VLLMGenerator if _want_vllm(settings.backend) else _HFGenerator)(model_path, settings)


# ----- entry point -------------------------------------------------------------------------------------------
def generate(
    model_path_or_run: str | Path,
    task: Any,
    split: str,
    out_jsonl: str | Path,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.01,
    top_p: float = 1.0,
    seed: int = 42,
    batch_size: int = 8,
    limit: int | None = None,
    source: str | None = None,
    backend: Backend = "auto",
    model_name: str | None = None,
    prompt_suffix: str | None = None,
) -> GenerationSummary:
    """Generate one response per test row and append the records to ``out_jsonl``.

    Args:
        model_path_or_run: A model folder, a run directory, or a Hub id (see :func:`resolve_model`).
        task: A task name (looked up with ``metapo.tasks.get_task``) or a task object with ``name``,
            ``load(source, split, limit)`` and ``max_completion_tokens``.
        split: Dataset split to generate for.
        out_jsonl: Output file; existing complete records are kept and their rows skipped.
        max_new_tokens: Generation cap; defaults to the task's ``max_completion_tokens``.
        temperature: 0.01 (the paper's near-greedy default); 0 means greedy.
        top_p: Nucleus mass (1.0 = off).
        seed: Base seed; batch ``b`` starting at row ``r`` uses ``seed + r``.
        batch_size: Prompts per forward batch.
        limit: Keep at most this many rows (the task's seeded selection).
        source: Data source passed to ``task.load`` (``None`` = the task's default).
        backend: ``"auto"`` (vLLM if importable with CUDA, else HF), ``"hf"`` or ``"vllm"``.
        model_name: Name stored in the records; defaults to the run or model folder name.
        prompt_suffix: Text appended to the last user turn (``STYLE_SUFFIXES`` holds the verbose and concise
            additions that make the gamed baseline variants for the length-controlled win rate).

    Returns:
        Counts of rows generated and skipped.
    """
    if isinstance(task, str):
        from metapo.tasks import get_task

        task = get_task(task)
    path, default_name = resolve_model(model_path_or_run)
    name = model_name or default_name
    rows = list(_rows(task.load(source, split, limit)))
    settings = GenerationSettings(
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=int(max_new_tokens or getattr(task, "max_completion_tokens", 400)),
        seed=seed,
        backend="vllm" if _want_vllm(backend) else "hf",
        batch_size=batch_size,
        prompt_suffix=prompt_suffix,
    )
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(out)
    done = done_rows(out)
    todo = []
    for index, row in enumerate(rows):
        if index in done:
            if done[index] != row_id(row):
                raise ValueError(
                    f"{out} row {index} has id {done[index]} but the task row's id is {row_id(row)}: the file was "
                    "made from different data (task, split, source or limit); write to a new file"
                )
            continue
        todo.append(index)
    start = time.perf_counter()
    logger.info(
        "%s: %d of %d rows to generate (%d already in %s)", name, len(todo), len(rows), len(done), out
    )
    if todo:
        generator = make_generator(path, settings)
        tokenizer = generator.tokenizer
        meta = {
            "model": name,
            "task": getattr(task, "name", str(task)),
            "split": split,
            "settings": asdict(settings),
        }
        # vLLM schedules its own batches: hand it bigger chunks so checkpoints stay frequent but cheap.
        chunk = batch_size * (8 if settings.backend == "vllm" else 1)
        for begin in range(0, len(todo), chunk):
            batch = todo[begin : begin + chunk]
            prompts = [render_prompt(tokenizer, rows[i]["prompt"], prompt_suffix) for i in batch]
            outputs = generator(prompts, seed + batch[0])
            append_jsonl(
                out,
                [
                    _record(i, rows[i], text, finish, n, meta)
                    for i, (text, finish, n) in zip(batch, outputs, strict=True)
                ],
            )
            logger.info("%s: %d/%d rows written", name, begin + len(batch), len(todo))
    return GenerationSummary(
        out_path=out,
        model=name,
        total=len(rows),
        skipped=len(rows) - len(todo),
        generated=len(todo),
        seconds=time.perf_counter() - start,
        backend=settings.backend,
    )


def _rows(data: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    for row in data:
        yield dict(row)


def load_generations(path: str | Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Read a generations file: ``(model name, {id: record})``; the first record of a repeated id wins."""
    from metapo.files import read_jsonl, require_file

    records = read_jsonl(require_file(path, "generations file"))
    if not records:
        raise ValueError(f"{path} holds no generation records")
    name = str(records[0].get("model") or Path(path).stem)
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        by_id.setdefault(str(record.get("id", record.get("row"))), record)
    return name, by_id
