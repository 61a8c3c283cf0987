"""Data of the reward-model trainer: row formats, tokenisation and collation.

Row formats (extra columns are ignored):

- pairs (``bt``, ``gpm``, ``themis``): ``prompt``, ``chosen``, ``rejected`` (strings or chat messages), optional
  ``margin``; Themis rows may carry ``chosen_trace`` / ``rejected_trace`` (see :mod:`metapo.prefmodels.themis`).
- ratings (``vector``): ``prompt``, ``response``, and either ``ratings`` (a list in attribute order) or one column per
  attribute name.

Prompts and responses are tokenised as the preference trainer does (:func:`metapo.train.preference.encode_pair_prompt`:
chat template for messages, EOS after plain-text responses), which for plain pairs gives the same ids as TRL's
``RewardTrainer``; so a ``bt`` model trained by TRL scores exactly what it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from metapo.prefmodels.model import HeadSpec
from metapo.prefmodels.themis import Trace, render_segments, tokenize_segments

BUILTIN = {
    "builtin": ("metapo.objectives", "data/preference_pairs.jsonl"),
    "builtin:themis": ("metapo.prefmodels", "data/themis_pairs.jsonl"),
    "builtin:ratings": ("metapo.prefmodels", "data/attribute_ratings.jsonl"),
}


def builtin_corpus_path() -> str:
    """The small reference corpus shipped for the Themis lookup tool."""
    return str(resources.files("metapo.prefmodels").joinpath("data/themis_corpus.jsonl"))


def cyclic_pairs(q: float = 0.8, repeats: int = 5) -> list[dict[str, Any]]:
    """Rows of an intransitive preference: A ≻ B, B ≻ C and C ≻ A, each with probability ``q``.

    Each ordered pair appears ``repeats`` times, its winner first in a ``round(q·repeats)`` of them.
    """
    wins = round(q * repeats)
    responses = {"A": "Paper.", "B": "Rock.", "C": "Scissors."}  # paper beats rock beats scissors
    rows = []
    for winner, loser in (("A", "B"), ("B", "C"), ("C", "A")):
        for i in range(repeats):
            a, b = (winner, loser) if i < wins else (loser, winner)
            rows.append({"prompt": "Pick one.", "chosen": responses[a], "rejected": responses[b]})
    return rows


def load_rows(name: str) -> list[dict[str, Any]]:
    """Rows of a built-in set (``builtin``, ``builtin:themis``, ``builtin:ratings``, ``builtin:cyclic``) or a
    local ``.jsonl``/``.json`` file.

    Raises:
        ValueError: An unknown name or an unreadable file, with the fix.
    """
    if name == "builtin:cyclic":
        return cyclic_pairs()
    if name in BUILTIN:
        package, path = BUILTIN[name]
        text = resources.files(package).joinpath(path).read_text("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    path = Path(name)
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(
            f"dataset {name!r}: use one of {', '.join([*BUILTIN, 'builtin:cyclic'])} or a .jsonl/.json file"
        )
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist")
    text = path.read_text("utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            return list(data) if isinstance(data, list) else [data]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"dataset file {path} is not valid JSON ({exc})") from None


def plain_text(value: Any) -> str:
    """A prompt or response as text: a string as is, chat messages' contents joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping))
    return str(value)


def encode_response(tokenizer: Any, prompt: Any, response: Any) -> tuple[list[int], int]:
    """Token ids of prompt + response and the number of prompt tokens."""
    from metapo.train.preference import encode_pair_prompt

    prompt_ids, (completion_ids,) = encode_pair_prompt(tokenizer, prompt, [response])
    return prompt_ids + completion_ids, len(prompt_ids)


def encode_sequence(
    tokenizer: Any, spec: HeadSpec, prompt: Any, response: Any, trace: Trace | None = None
) -> dict[str, Any]:
    """One scored sequence, as the trainer and the scorer both see it.

    ``bt``/``gpm``/``vector``: prompt + response; ``themis``: the context, the trace, the rationale and EOS, with the
    kind and step of every token. Sequences longer than ``spec.max_length`` lose their start (every head reads the
    last token).

    Returns:
        ``{"ids", "prompt_length"}`` (plus ``"kinds"``, ``"steps"`` for Themis).
    """
    if spec.kind == "themis":
        segments = render_segments(plain_text(prompt), plain_text(response), trace or Trace())
        ids, kinds, steps = tokenize_segments(tokenizer, segments)
        out: dict[str, Any] = {
            "ids": ids,
            "kinds": kinds,
            "steps": steps,
            "prompt_length": 1,
        }  # no prompt gate
    else:
        ids, prompt_length = encode_response(tokenizer, prompt, response)
        out = {"ids": ids, "prompt_length": prompt_length}
    cut = 0 if spec.max_length is None else max(0, len(out["ids"]) - spec.max_length)
    if cut:
        for key in ("ids", "kinds", "steps"):
            if key in out:
                out[key] = out[key][cut:]
        out["prompt_length"] = max(out["prompt_length"] - cut, 1)
    return out


def collator_item(sequences: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """One :class:`RewardCollator` item from the sequences of one example (a pair, or a single response)."""
    item: dict[str, Any] = {
        "ids": [s["ids"] for s in sequences],
        "prompt_lengths": [s["prompt_length"] for s in sequences],
    }
    if "kinds" in sequences[0]:
        item["kinds"] = [s["kinds"] for s in sequences]
        item["steps"] = [s["steps"] for s in sequences]
    return {**item, **extra}


def ratings_of(row: Mapping[str, Any], attributes: Sequence[str]) -> list[float]:
    """A rating row's scores in attribute order.

    Raises:
        ValueError: Missing or misshapen ratings, naming the attribute.
    """
    if row.get("ratings") is not None:
        ratings = list(row["ratings"])
        if len(ratings) != len(attributes):
            raise ValueError(
                f"row has {len(ratings)} ratings for the {len(attributes)} attributes {list(attributes)}"
            )
        return [float(x) for x in ratings]
    missing = [a for a in attributes if row.get(a) is None]
    if missing:
        raise ValueError(f"rating row lacks {missing} (and has no 'ratings' list): {dict(row)}")
    return [float(row[a]) for a in attributes]


def encode_rows(rows: Sequence[Mapping[str, Any]], tokenizer: Any, spec: HeadSpec) -> list[dict[str, Any]]:
    """Tokenise rows for :class:`RewardCollator` according to the model kind.

    Raises:
        ValueError: Rows that do not fit the kind (naming the missing column).
    """
    if not rows:
        raise ValueError("empty dataset")
    out = []
    for i, row in enumerate(rows):
        if spec.kind == "vector":
            if "response" not in row:
                raise ValueError(f"row {i}: a vector reward model trains on prompt/response/ratings rows")
            sequence = encode_sequence(tokenizer, spec, row["prompt"], row["response"])
            out.append(collator_item([sequence], labels=ratings_of(row, spec.attributes)))
            continue
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in row]
        if missing:
            raise ValueError(f"row {i}: preference rows need prompt, chosen and rejected; missing {missing}")
        pair = [
            encode_sequence(
                tokenizer, spec, row["prompt"], row[slot], Trace.from_data(row.get(f"{slot}_trace"))
            )
            for slot in ("chosen", "rejected")
        ]
        item = collator_item(pair)
        if row.get("margin") is not None:
            item["margin"] = float(row["margin"])
        out.append(item)
    return out


@dataclass
class RewardCollator:
    """Right-pads a batch: pair items become ``[chosen rows..., rejected rows...]`` (TRL's layout), rating items one
    row each. Emits ``input_ids``, ``attention_mask``, ``prompt_lengths`` and, when present, ``labels``, ``margin``,
    ``kinds`` and ``steps``.
    """

    pad_token_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        per_item = len(items[0]["ids"])
        order = [(b, s) for s in range(per_item) for b in range(len(items))]
        width = max(len(items[b]["ids"][s]) for b, s in order)
        n = len(order)
        batch = {
            "input_ids": torch.full((n, width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((n, width), dtype=torch.long),
            "prompt_lengths": torch.tensor(
                [items[b]["prompt_lengths"][s] for b, s in order], dtype=torch.long
            ),
        }
        has_kinds = "kinds" in items[0]
        if has_kinds:
            batch["kinds"] = torch.zeros((n, width), dtype=torch.long)
            batch["steps"] = torch.zeros((n, width), dtype=torch.long)
        for r, (b, s) in enumerate(order):
            ids = items[b]["ids"][s]
            batch["input_ids"][r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["attention_mask"][r, : len(ids)] = 1
            if has_kinds:
                batch["kinds"][r, : len(ids)] = torch.tensor(items[b]["kinds"][s], dtype=torch.long)
                batch["steps"][r, : len(ids)] = torch.tensor(items[b]["steps"][s], dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.float)
        if all("margin" in item for item in items):
            batch["margin"] = torch.tensor([item["margin"] for item in items], dtype=torch.float)
        return batch
