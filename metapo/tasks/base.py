"""The task abstraction: everything a run needs to know about one kind of work.

A :class:`Task` turns dataset rows into TRL prompt-only conversational examples, names the judge and meta-judge
personas, supplies the starting rubric and fixed-rubric baselines, lists its rule gates, and scores generations
with its own metric. Data comes from a small built-in set (so demos and tests need no download), a Hugging Face
dataset (``name`` or ``name:config``), or local JSONL / JSON / Parquet files. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from metapo.reward.gates import Gate, RequireEOS
from metapo.rubric.model import Rubric
from metapo.untrusted import scrub

logger = logging.getLogger(__name__)

#: File suffixes read as local data.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
#: ``source`` values that select the built-in set explicitly.
BUILTIN_SOURCES = ("builtin", "built-in")


class TaskDataError(ValueError):
    """Task data could not be read or lacks what the task needs; the message says how to fix it."""


@dataclass
class LoadStats:
    """What :meth:`Task.load` read, dropped and kept (also logged).

    Attributes:
        task: Task name.
        source: Where the rows came from, in words.
        split: Requested split.
        rows_read: Rows read from the source.
        dropped: Reason to number of rows dropped for it.
        kept: Rows kept after filtering and ``limit``.
    """

    task: str
    source: str
    split: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    kept: int = 0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        return (
            f"task {self.task}: read {self.rows_read} rows from {self.source} (split {self.split}); "
            f"dropped: {dropped}; kept {self.kept}"
        )


@dataclass
class Task(ABC):
    """One kind of work for Meta Policy Optimization: data, prompts, personas, rubrics, gates and metric.

    Subclasses set the field defaults and implement :meth:`initial_rubric`, :meth:`to_example` and
    :meth:`metric`. Every field can be overridden per run (``get_task("essay", max_completion_tokens=300)``).

    Attributes:
        name: Registry name.
        description: One line for ``list_tasks`` and logs.
        instruction: The policy-facing task text. The meta-judge sees it as the task description.
        judge_persona: System prompt of the reward-model judge.
        meta_persona: System prompt of the meta-reward model.
        judge_input_label: How the judge prompt labels ``task_input`` ("Writing prompt", "Bill", ...).
        max_completion_tokens: Generation cap for the policy.
        default_meta_interval: Policy updates between meta steps (the paper's value for this task).
        default_source: The paper's dataset on the Hugging Face Hub, for documentation and the CLI.
        builtin_file: JSONL file under ``metapo/tasks/data`` with the built-in set (rows carry a ``split``).
        columns: Renames applied to every source row before anything else, as ``{expected: source_column}``,
            for data whose column names differ from the task's.
        eos_penalty: Added to the judge's reward (normalised units) when generation hit the token limit without
            EOS, as the paper's missing-EOS penalty; ``None`` turns the gate off.
        judge_chars: Longest text (task input or response) the reward judge is shown per field.
        meta_chars: Longest text the meta-reward model is shown per field.
        meta_reference_column: Column with a reference answer the meta-reward model is shown beside each
            sample (math: the worked solution; summarization: the reference summary).
        meta_mode: How the meta step refines rubrics for this task: ``"merge"`` (analyse and refine sampled
            rollouts, then merge; essay, summarization, ethics) or ``"guidelines"`` (per-lineage guideline
            rewrite from score-stratified cases; math).
    """

    name: str = ""
    description: str = ""
    instruction: str = ""
    judge_persona: str = ""
    meta_persona: str = ""
    judge_input_label: str = "Task input"
    max_completion_tokens: int = 512
    default_meta_interval: int = 10
    default_source: str | None = None
    builtin_file: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    eos_penalty: float | None = -0.2
    judge_chars: int = 6000
    meta_chars: int = 3000
    meta_reference_column: str | None = None
    meta_mode: str = "merge"
    last_load_stats: LoadStats | None = field(default=None, init=False, repr=False, compare=False)

    #: Columns a source row must have; a tuple inside lists accepted alternatives (first match wins).
    required_columns: ClassVar[tuple[str | tuple[str, ...], ...]] = ()
    #: Columns ``to_example`` adds besides ``prompt`` and ``task_input`` (gold and bookkeeping fields).
    extra_columns: ClassVar[tuple[str, ...]] = ()

    # ----- rubrics and gates ------------------------------------------------------------------------
    @abstractmethod
    def initial_rubric(self) -> Rubric:
        """The minimal one-item 0–5 rubric that MPO starts from (the paper's iteration 0)."""

    def baseline_rubrics(self) -> dict[str, Rubric]:
        """Fixed rubrics for baseline runs, by name; always includes ``"iter0"`` (the frozen initial rubric)."""
        return {"iter0": self.initial_rubric()}

    def gates(self) -> tuple[Gate, ...]:
        """Rule gates checked, in order, before any judge call: the first replacing gate that fires stands in for
        the judge; additive ones (missing EOS) adjust the judge's reward."""
        return (RequireEOS(penalty=self.eos_penalty),) if self.eos_penalty is not None else ()

    def lineage_key(self, columns: Mapping[str, Any]) -> str:
        """The rubric lineage a row belongs to; single-rubric tasks have one, ``"default"``."""
        return "default"

    # ----- examples ---------------------------------------------------------------------------------
    @abstractmethod
    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        """Turn one source row into a TRL prompt-only conversational example.

        Returns:
            ``{"prompt": [{"role": "user", "content": ...}], "task_input": <what the judge sees as the task
            input>, **gold_and_extra_columns}``.
        """

    def drop_reason(self, row: dict[str, Any]) -> str | None:
        """Why this source row is unusable (``None`` keeps it). Reasons are counted and logged by ``load``."""
        return None

    def postprocess(self, examples: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Hook over all examples of one load (the math task assigns clusters here)."""
        return examples

    # ----- metric -----------------------------------------------------------------------------------
    @abstractmethod
    def metric(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Score generation records ``{"response": ..., **gold_columns}``; returns JSON-ready numbers."""

    # ----- data -------------------------------------------------------------------------------------
    def load(
        self,
        source: str | Path | None = None,
        split: str = "train",
        limit: int | None = None,
        seed: int = 0,
    ) -> Any:
        """Load, validate, filter and convert data into a ``datasets.Dataset`` of examples.

        Args:
            source: ``None`` or ``"builtin"`` for the built-in set; a local ``.jsonl``/``.json``/``.parquet``
                file; a folder holding ``<split>.jsonl`` (or ``.json``/``.parquet``); or a Hugging Face dataset
                as ``name``, ``name:config`` or ``name:config1,config2``.
            split: Split to read (built-in sets have ``train`` and ``test``; a single local file is the split).
            limit: Keep at most this many rows, chosen by a shuffle seeded with ``seed`` after filtering.
            seed: Seed of that shuffle.

        Returns:
            A ``datasets.Dataset`` whose rows are :meth:`to_example` outputs. Load statistics are logged and
            kept in :attr:`last_load_stats`.

        Raises:
            TaskDataError: The source is missing or unreadable, or lacks a required column.
        """
        import datasets

        rows, where = self.read_source(source, split)
        stats = LoadStats(task=self.name, source=where, split=split, rows_read=len(rows))
        rows = [self._renamed(row) for row in rows]
        self.check_columns(rows, where)
        kept: list[dict[str, Any]] = []
        dropped: Counter[str] = Counter()
        for row in rows:
            reason = self.drop_reason(row)
            if reason is None:
                kept.append(row)
            else:
                dropped[reason] += 1
        if limit is not None and limit < len(kept):
            order = list(range(len(kept)))
            random.Random(seed).shuffle(order)
            kept = [kept[i] for i in sorted(order[:limit])]
            dropped[f"over limit {limit}"] += len(order) - limit
        if not kept:
            raise TaskDataError(
                f"no usable rows for task {self.name!r} in {where} (split {split}); "
                f"dropped: {dict(dropped) or 'none (the source is empty)'}"
            )
        examples = self.postprocess([self.to_example(row) for row in kept], split)
        stats.dropped, stats.kept = dict(dropped), len(examples)
        self.last_load_stats = stats
        logger.info(stats.summary())
        return datasets.Dataset.from_list(examples)

    def read_source(self, source: str | Path | None, split: str) -> tuple[list[dict[str, Any]], str]:
        """Raw rows and a description of where they came from (see :func:`read_rows`)."""
        return read_rows(source, split, builtin_file=self.builtin_file)

    def check_columns(self, rows: Sequence[Mapping[str, Any]], where: str) -> None:
        """Raise :class:`TaskDataError` naming any required column that no row has."""
        if not rows:
            return
        present: set[str] = set()
        for row in rows[:1000]:
            present.update(row)
        for need in self.required_columns:
            options = (need,) if isinstance(need, str) else need
            if not any(option in present for option in options):
                looked = " or ".join(repr(o) for o in options)
                raise TaskDataError(
                    f"task {self.name!r}: {where} has no column {looked}; its columns are "
                    f"{sorted(present)}. Rename the column in the data, or map it with "
                    f"columns={{{options[0]!r}: '<your column>'}} (the YAML task's 'columns:' key)."
                )

    def _renamed(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for expected, source_column in self.columns.items():
            if source_column in row:
                out[expected] = row[source_column]
        return out


# ----- reading rows -------------------------------------------------------------------------------------
def read_rows(
    source: str | Path | None, split: str, *, builtin_file: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Read raw rows from any supported source.

    Args:
        source: See :meth:`Task.load`.
        split: Split to read.
        builtin_file: Built-in JSONL under ``metapo/tasks/data`` used when ``source`` is ``None``/``"builtin"``.

    Returns:
        ``(rows, where)``: the rows as plain dicts and a description of the source for messages.
    """
    if source is None or str(source).lower() in BUILTIN_SOURCES:
        if builtin_file is None:
            raise TaskDataError("this task has no built-in data; pass a dataset name or a local file")
        return read_builtin(builtin_file, split), f"built-in set {builtin_file}"
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        files = split_files(path, split)
        if not files:
            found = sorted(p.name for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
            raise TaskDataError(
                f"folder {path} has no {split}.jsonl, {split}.json or {split}.parquet, nor files named "
                f"{split}.*.jsonl or {split}-*.parquet (data files there: {found or 'none'}); name the file "
                "after the split or pass the file itself"
            )
        rows = [row for file in files for row in read_local_file(file)]
        return rows, ", ".join(str(f) for f in files)
    if path.is_file():
        return read_local_file(path), str(path)
    if path.suffix in LOCAL_SUFFIXES or text.startswith((".", "/", "~")):
        raise TaskDataError(
            f"data file {path} does not exist; pass an existing .jsonl/.json/.parquet file, a folder with "
            f"{split}.jsonl, or a Hugging Face dataset name such as 'owner/name' or 'owner/name:config'"
        )
    return read_hub(text, split), f"Hugging Face dataset {text}"


def split_files(folder: Path, split: str) -> list[Path]:
    """Data files of one split in a folder.

    ``<split>.jsonl`` (or ``.json``/``.parquet``) wins; otherwise every file named ``<split>.<anything>`` or
    ``<split>-<anything>`` with one data suffix is taken, which covers release names such as
    ``train.scruples-anecdotes.jsonl`` and Hub shards such as ``train-00000-of-00002.parquet``.
    """
    for suffix in LOCAL_SUFFIXES:
        exact = folder / f"{split}{suffix}"
        if exact.is_file():
            return [exact]
    for suffix in LOCAL_SUFFIXES:
        matches = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.name.endswith(suffix) and p.name.startswith((f"{split}.", f"{split}-"))
        )
        if matches:
            return matches
    return []


def read_builtin(filename: str, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a built-in JSONL file shipped in ``metapo/tasks/data``."""
    resource = resources.files("metapo.tasks").joinpath("data", filename)
    rows = _parse_jsonl(resource.read_text(encoding="utf-8"), f"built-in {filename}")
    splits = sorted({str(r.get("split")) for r in rows})
    chosen = [r for r in rows if r.get("split") == split]
    if not chosen:
        raise TaskDataError(f"built-in set {filename} has no split {split!r}; it has {splits}")
    return chosen


def read_local_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (a list, or an object holding one list) or ``.parquet`` file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise TaskDataError(f"cannot read Parquet file {path}: {exc}") from exc
    if path.suffix not in (".jsonl", ".json"):
        raise TaskDataError(f"unsupported data file {path}; use .jsonl, .json or .parquet")
    from metapo.files import read_user_text

    text = read_user_text(path, "data file")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            # Many ".json" dumps (including the Hub's) are really JSON Lines.
            return _parse_jsonl(text, str(path))
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise TaskDataError(f"{path}: expected a list of rows, or an object holding exactly one list")
            data = lists[0]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise TaskDataError(f"{path}: expected a list of JSON objects (one per row)")
        return [_scrubbed(row) for row in data]
    return _parse_jsonl(text, str(path))


def read_hub(name: str, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset given as ``name``, ``name:config`` or ``name:config1,config2`` (the
    configs' rows are concatenated, e.g. the per-subject configs of a MATH copy)."""
    import datasets

    repo, _, configs = name.partition(":")
    rows: list[dict[str, Any]] = []
    for config in [c.strip() for c in configs.split(",") if c.strip()] or [None]:
        try:
            ds = datasets.load_dataset(repo, config, split=split)
        except Exception as exc:  # network, auth, missing split and missing config all surface differently
            raise TaskDataError(
                f"could not load Hugging Face dataset {repo!r} (config {config!r}, split {split!r}): {exc}. "
                "Check the name, config and split, run once with network access so it is cached, or download "
                "it and pass the local file instead."
            ) from exc
        rows.extend(ds.to_list())
    return rows


def _parse_jsonl(text: str, where: str) -> list[dict[str, Any]]:
    rows = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which JSON strings may hold raw.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{where}, line {lineno}: not valid JSON ({exc.msg})") from exc
        except RecursionError:
            raise TaskDataError(f"{where}, line {lineno}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{where}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(_scrubbed(row))
    return rows


# ----- helpers shared by tasks --------------------------------------------------------------------------
def user_prompt(content: str) -> list[dict[str, str]]:
    """A TRL conversational prompt with one user turn."""
    return [{"role": "user", "content": content}]


def is_blank(value: Any) -> bool:
    """``None``, or a string that is empty after stripping."""
    return value is None or (isinstance(value, str) and not value.strip())


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def length_stats(
    responses: Sequence[str], *, short_words: int = 30, long_words: int | None = None
) -> dict[str, Any]:
    """Response length statistics in words.

    ``short_fraction`` flags collapse towards title-only answers, the reward hack the paper saw under a fixed
    rubric; ``over_limit_fraction`` measures how often the instructed word limit was ignored.
    """
    counts = [word_count(r) for r in responses]
    if not counts:
        return {"n": 0}
    stats: dict[str, Any] = {
        "n": len(counts),
        "words_mean": statistics.fmean(counts),
        "words_median": statistics.median(counts),
        "words_min": min(counts),
        "words_max": max(counts),
        "empty": sum(c == 0 for c in counts),
        f"under_{short_words}_words_fraction": sum(c < short_words for c in counts) / len(counts),
    }
    if long_words is not None:
        stats[f"over_{long_words}_words_fraction"] = sum(c > long_words for c in counts) / len(counts)
    return stats


def _scrubbed(value: Any) -> Any:
    """``value`` with lone surrogates (which JSON's ``\\ud800`` escapes produce) replaced in every string.

    No tokenizer accepts them: one in a prompt would stop training at the first generation.
    """
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value
