"""Offline preference trainer for every objective in :mod:`metapo.objectives`.

The trainer is a thin ``transformers.Trainer``: it tokenises preference data, runs the policy (and, when the
objective needs one, the reference) over every response in one padded batch, and hands the objective exactly the
tensors its signature asks for. The losses themselves live only in ``metapo.objectives``; nothing here knows a
formula. TRL's ``DPOTrainer`` was not subclassed because its loss, batch layout (``[chosen, rejected]`` halves) and
metrics are fused in one method in TRL 1.16, which leaves no room for lists, rationales, gold responses, online
samples or auxiliary heads without overriding all of it.

Data: rows with ``prompt``, ``chosen``, ``rejected`` (strings or chat messages), or listwise rows with ``prompt``,
``responses`` and optional ``scores``; pairwise objectives take the best and worst of a list, listwise objectives
take a pair as a list of two. Extra columns are read when the objective uses them: ``rationale`` (RDPO), ``gold`` or
``reference`` (Triple PO), ``aux_margins`` or ``aux_rewards_chosen``/``aux_rewards_rejected`` (MODPO),
``calibration`` (VPO), ``user_context`` or ``user`` (FSPO), ``degree_variants`` (SPO), ``pair_smoothing`` (per-pair
label smoothing: cDPO, UPO, MCTS-DPO), and TRL-style precomputed ``ref_chosen_logps``/``ref_rejected_logps``. Two
columns change how a pair is encoded: ``rejected_prompt`` conditions the rejected response on its own prompt (MAPL's
prompt-side pairs compare ``π(y | x⁺)`` with ``π(y | x⁻)``), and ``partial: true`` marks completions that are not
finished responses (MCTS-DPO's reasoning steps), so no end-of-sequence token is appended to them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from metapo.objectives import (
    ObjectiveSpec,
    build_user_contexts,
    format_fewshot_prompt,
    get_objective,
    make_degree_variants,
    token_kl,
)
from metapo.objectives.base import masked_sum
from metapo.train.loss_trainer import LossOnlyTrainer

logger = logging.getLogger(__name__)

DEFAULT_RATIONALE_TEMPLATE = (
    "{prompt}\n\nResponse above:\n{chosen}\n\nResponse below:\n{rejected}\n\n"
    "Explain which response is better and why.\n"
)

# Slots are the kinds of response sequences a batch can hold. Single slots have one sequence per example, list
# slots several.
PAIR_SLOTS = ("chosen", "rejected", "gold", "rationale", "calibration", "online")
LIST_SLOTS = ("list", "variants")
_ARG = re.compile(r"^(policy|reference)_([a-z]+)_(logps|token_logps|hidden_states)$")
_HEAD_ATTR = "preference_head"
# Per-example numbers the collator stacks into ``(B,)`` tensors when every example of a batch has them.
EXAMPLE_SCALARS = ("ref_chosen_logps", "ref_rejected_logps", "pair_smoothing")
# More of them, when an objective names them as inputs (see ``scalar_columns``): log-probs under earlier
# iterates and preferences against an opponent, which an online trainer computes.
_SCALAR = re.compile(r"^((previous|older)_[a-z]+_logps|[a-z]+_preference)$")


@dataclass
class PreferenceConfig(TrainingArguments):
    """Training arguments for :class:`PreferenceTrainer`: ``TrainingArguments`` plus the objective and data options.

    Parameters that differ from ``TrainingArguments``: ``learning_rate`` defaults to 1e-6 and ``logging_steps`` to
    10 (as in TRL's preference trainers), and ``remove_unused_columns`` to ``False`` because the extra columns are
    data.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "objective_kwargs", "model_init_kwargs"]

    objective: str = field(
        default="dpo", metadata={"help": "Registry name of the objective (see `metapo objectives`)."}
    )
    objective_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Hyperparameters of the objective, e.g. {'beta': 0.1}; unknown names are an error."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for `from_pretrained` when the model is a path."}
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Truncate prompt + response to this many tokens (keeping the start)."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute reference log-probs once before training and free the reference model."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: the train batch size)."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout in the policy and reference."}
    )
    num_shots: int = field(
        default=4, metadata={"help": "FSPO: few-shot user preferences placed in each prompt."}
    )
    rationale_template: str = field(
        default=DEFAULT_RATIONALE_TEMPLATE,
        metadata={
            "help": "RDPO: prompt the rationale is conditioned on; fields {prompt}, {chosen}, {rejected}."
        },
    )
    step_delimiter: str = field(
        default="\n", metadata={"help": "Tree-PO: separator between reasoning steps."}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Length of online samples (HyPO, online VPO)."})
    generation_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of online samples."}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer reads its own columns."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.objective_kwargs, str):
            self.objective_kwargs = json.loads(self.objective_kwargs)
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        # Fail at configuration time, not after the model has loaded.
        get_objective(self.objective).hyperparameters(self.objective_kwargs or {})


def load_builtin_preferences(kind: str = "pairs"):
    """The built-in tiny preference set, for smoke runs and tests.

    Args:
        kind: ``"pairs"`` (40 prompt/chosen/rejected rows with rationale, gold, user and auxiliary-reward
            columns) or ``"lists"`` (6 ranked lists with scores and step-structured responses).

    Returns:
        A ``datasets.Dataset``.
    """
    from datasets import Dataset

    if kind not in ("pairs", "lists"):
        raise ValueError(f"kind must be 'pairs' or 'lists', got {kind!r}")
    text = resources.files("metapo.objectives").joinpath(f"data/preference_{kind}.jsonl").read_text("utf-8")
    return Dataset.from_list([json.loads(line) for line in text.splitlines() if line.strip()])


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and "role" in value[0]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if _is_chat(value):
        return "\n".join(str(m.get("content", "")) for m in value)
    return str(value)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list, **kwargs: Any) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def encode_pair_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completions: Sequence[Any], *, add_eos: bool = True
) -> tuple[list[int], list[list[int]]]:
    """Tokenise one prompt with several completions; return the shared prompt ids and each completion's ids.

    The completion starts where the tokenised prompt and the tokenised prompt + completion first differ (chat
    templates and BPE merges can change the last prompt tokens), using the smallest such point over all
    completions so that every sequence shares the same prompt. Plain-text completions get the EOS token appended
    (unless ``add_eos`` is false: partial completions such as one reasoning step); chat completions end with the
    template's end-of-turn token.

    Args:
        tokenizer: The tokenizer.
        prompt: A string or a list of chat messages.
        completions: Strings, or lists of assistant messages for chat prompts.
        add_eos: Append EOS to plain-text completions that do not already end with it.

    Returns:
        ``(prompt_ids, [completion_ids, ...])``.
    """
    if _is_chat(prompt):
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        fulls = []
        for completion in completions:
            turns = (
                completion if _is_chat(completion) else [{"role": "assistant", "content": _text(completion)}]
            )
            fulls.append(_chat_ids(tokenizer, [*prompt, *turns]))
    else:
        # Special tokens as the tokenizer adds them (BOS for Llama-style tokenizers), as TRL does.
        prompt_ids = tokenizer(prompt)["input_ids"]
        eos = (tokenizer.eos_token or "") if add_eos else ""
        fulls = []
        for completion in completions:
            text = _text(completion)
            if eos and not text.endswith(eos):
                text += eos
            fulls.append(tokenizer(prompt + text)["input_ids"])
    cut = min([len(prompt_ids), *(_common_prefix(prompt_ids, full) for full in fulls)])
    return list(prompt_ids[:cut]), [list(full[cut:]) for full in fulls]


def step_ids_for(tokenizer: PreTrainedTokenizerBase, text: str, n_tokens: int, delimiter: str) -> list[int]:
    """1-based step index for each of ``n_tokens`` completion tokens, splitting ``text`` at ``delimiter``.

    Each step's token count comes from tokenising the step on its own, so a BPE merge across a step boundary can
    shift a boundary by a token; trailing tokens (EOS, end of turn) belong to the last step.

    Args:
        tokenizer: The tokenizer.
        text: The completion text.
        n_tokens: Number of completion tokens to label.
        delimiter: Step separator.

    Returns:
        A list of ``n_tokens`` step ids.
    """
    pieces = [p for p in text.split(delimiter)] if delimiter else [text]
    ids: list[int] = []
    for step, piece in enumerate(pieces, start=1):
        chunk = piece + (delimiter if step < len(pieces) else "")
        count = len(tokenizer(chunk, add_special_tokens=False)["input_ids"]) if chunk else 0
        ids.extend([step] * count)
    last = max(len(pieces), 1)
    ids = ids[:n_tokens]
    return ids + [last] * (n_tokens - len(ids))


# ---------------------------------------------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    """Which sequences and columns one objective needs, derived from its argument names and hyperparameters."""

    kind: str  # "pair" or "list"
    slots: tuple[str, ...]  # sequence slots in batch order (generated ones excluded)
    reference_slots: tuple[str, ...]  # slots whose reference log-probs the objective reads
    generated_slot: str | None  # slot filled by online generation, if any
    online_source: str | None  # "policy" or "reference"
    needs_hidden: bool
    needs_logits: bool  # full-vocabulary logits of policy and reference (token KL)
    head_keys: tuple[str, ...]  # outputs of the auxiliary head the objective reads, as "slot_key"

    @classmethod
    def for_objective(cls, spec: ObjectiveSpec, hp: Mapping[str, Any]) -> DataPlan:
        slots: list[str] = []
        reference_slots: list[str] = []
        needs_hidden = needs_logits = False
        head_keys: list[str] = []
        head_outputs = ("reward_mask", "kl_mask", "degree_logits")
        for arg in spec.inputs:
            match = _ARG.match(arg)
            if match:
                who, slot, what = match.groups()
                if slot not in slots:
                    slots.append(slot)
                if who == "reference" and slot not in reference_slots:
                    reference_slots.append(slot)
                needs_hidden |= what == "hidden_states"
                continue
            if arg.endswith("_token_kl"):
                needs_logits = True
                continue
            for key in head_outputs:
                if arg.endswith("_" + key):
                    head_keys.append(arg)
                    needs_hidden = True
                    slot = arg[: -len(key) - 1]
                    if slot not in slots:
                        slots.append(slot)
            if arg == "variants_valid" and "variants" not in slots:
                slots.append("variants")
        online = spec.online(hp)
        generated = None
        if online is not None:
            generated = "online" if "online" in slots else "calibration"
        if not spec.requires_reference(hp):
            reference_slots = []
        ordered = [s for s in (*PAIR_SLOTS, *LIST_SLOTS) if s in slots and s != generated]
        return cls(
            kind=spec.data,
            slots=tuple(ordered),
            reference_slots=tuple(reference_slots),
            generated_slot=generated,
            online_source=online,
            needs_hidden=needs_hidden,
            needs_logits=needs_logits,
            head_keys=tuple(head_keys),
        )


def scalar_columns(spec: ObjectiveSpec) -> tuple[str, ...]:
    """Per-example numbers the objective reads from the data by name (``_SCALAR``), e.g. ``chosen_preference``.

    An online trainer supplies them (log-probabilities under earlier iterates, preferences against an opponent);
    they travel through tokenisation and collation unchanged, one float per example.
    """
    return tuple(name for name in spec.inputs if _SCALAR.match(name))


def _rank(row: Mapping[str, Any]) -> tuple[list[Any], list[float] | None]:
    """A listwise row's responses, best first, and their scores (None when the row has none)."""
    responses = list(row["responses"])
    scores = row.get("scores")
    if scores is None:
        return responses, None
    order = sorted(range(len(responses)), key=lambda i: -float(scores[i]))
    return [responses[i] for i in order], [float(scores[i]) for i in order]


def _canonical_pair(row: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(row)
    if row.get("responses") is not None and row.get("chosen") is None:
        ranked, _ = _rank(row)
        row["chosen"], row["rejected"] = ranked[0], ranked[-1]
    if row.get("prompt") is None:
        from trl.data_utils import extract_prompt

        row.update(extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]}))
    return row


def prepare_dataset(
    dataset: Any,
    tokenizer: PreTrainedTokenizerBase,
    spec: ObjectiveSpec,
    hp: Mapping[str, Any],
    args: PreferenceConfig,
    plan: DataPlan,
):
    """Tokenise a preference dataset into the columns the objective needs.

    Args:
        dataset: A ``datasets.Dataset`` (or a list of dict rows).
        tokenizer: The tokenizer.
        spec: The objective.
        hp: Its resolved hyperparameters.
        args: The training config (templates, shots, delimiters, ``max_length``).
        plan: What to build.

    Returns:
        A ``datasets.Dataset`` of token-id lists (and scores, margins, step ids), one row per example.
    """
    from datasets import Dataset

    rows = [dict(r) for r in dataset]
    if not rows:
        raise ValueError("empty preference dataset")
    missing = [c for c in spec.required_columns if rows[0].get(c) is None]
    if missing:
        raise ValueError(f"objective {spec.name!r} needs column(s) {missing}")
    if plan.kind == "pair":
        rows = [_canonical_pair(r) for r in rows]
    for key in (*EXAMPLE_SCALARS, *scalar_columns(spec)):
        present = [r.get(key) is not None for r in rows]
        if any(present) and not all(present):
            raise ValueError(
                f"column {key!r} is set in some rows but not in row {present.index(False)}: set it in all"
            )
    own_rejected_prompt = plan.kind == "pair" and any(r.get("rejected_prompt") is not None for r in rows)
    contexts: list[list[dict[str, Any]]] | None = None
    if spec.name == "fspo":
        if rows[0].get("user_context") is not None:
            contexts = [list(r["user_context"]) for r in rows]
        elif rows[0].get("user") is not None:
            contexts = build_user_contexts(rows)
        else:
            logger.warning("fspo without user_context or user columns: training plain IPO")

    out = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {}
        prompt = row["prompt"]
        if contexts is not None:
            prompt = format_fewshot_prompt(row, contexts[i], num_shots=args.num_shots)
        if plan.kind == "list":
            if row.get("responses") is not None:
                responses, scores = _rank(row)
            else:
                responses, scores = [row["chosen"], row["rejected"]], None
            prompt_ids, ids = encode_pair_prompt(tokenizer, prompt, responses)
            item["prompt_ids"], item["list_ids"] = prompt_ids, ids
            item["list_scores"] = scores
            item["list_step_ids"] = [
                step_ids_for(tokenizer, _text(r), len(c), args.step_delimiter)
                for r, c in zip(responses, ids, strict=True)
            ]
        else:
            completions: dict[str, Any] = {"chosen": row["chosen"], "rejected": row["rejected"]}
            # Missing gold/calibration responses are not duplicated here: the trainer reuses the chosen rows.
            gold = row.get("gold") or row.get("reference")
            if "gold" in plan.slots and gold is not None:
                completions["gold"] = gold
            if "calibration" in plan.slots and row.get("calibration") is not None:
                completions["calibration"] = row["calibration"]
            variants: list[Any] = []
            if "variants" in plan.slots:
                variants = row.get("degree_variants") or make_degree_variants(
                    _text(row["chosen"]), max_removed=int(hp["max_removed"])
                )
            add_eos = not row.get("partial")
            if own_rejected_prompt:
                rejected_prompt = row.get("rejected_prompt")
                rejected_prompt = prompt if rejected_prompt is None else rejected_prompt
                r_prompt_ids, (r_ids,) = encode_pair_prompt(
                    tokenizer, rejected_prompt, [completions.pop("rejected")], add_eos=add_eos
                )
                item["rejected_prompt_ids"], item["rejected_ids"] = r_prompt_ids, r_ids
            names = list(completions)
            prompt_ids, ids = encode_pair_prompt(
                tokenizer, prompt, [*completions.values(), *variants], add_eos=add_eos
            )
            item["prompt_ids"] = prompt_ids
            for name, completion_ids in zip(names, ids, strict=False):
                item[f"{name}_ids"] = completion_ids
            if variants:
                item["variants_ids"] = ids[len(names) :]
            if "rationale" in plan.slots:
                rationale_prompt = args.rationale_template.format(
                    prompt=_text(prompt), chosen=_text(row["chosen"]), rejected=_text(row["rejected"])
                )
                if _is_chat(prompt):
                    rationale_prompt = [{"role": "user", "content": rationale_prompt}]
                r_prompt_ids, (r_ids,) = encode_pair_prompt(tokenizer, rationale_prompt, [row["rationale"]])
                item["rationale_prompt_ids"], item["rationale_ids"] = r_prompt_ids, r_ids
            if "aux_margins" in spec.inputs:
                if row.get("aux_margins") is not None:
                    margins = row["aux_margins"]
                elif (
                    row.get("aux_rewards_chosen") is not None and row.get("aux_rewards_rejected") is not None
                ):
                    chosen_r, rejected_r = row["aux_rewards_chosen"], row["aux_rewards_rejected"]
                    chosen_r = chosen_r if isinstance(chosen_r, list) else [chosen_r]
                    rejected_r = rejected_r if isinstance(rejected_r, list) else [rejected_r]
                    margins = [float(a) - float(b) for a, b in zip(chosen_r, rejected_r, strict=True)]
                else:
                    raise ValueError(
                        "modpo needs aux_margins or aux_rewards_chosen/aux_rewards_rejected columns"
                    )
                item["aux_margins"] = [
                    float(m) for m in (margins if isinstance(margins, list) else [margins])
                ]
        for key in (*EXAMPLE_SCALARS, *scalar_columns(spec)):
            if row.get(key) is not None:
                item[key] = float(row[key])
        longest_prompt = max(len(item["prompt_ids"]), len(item.get("rejected_prompt_ids") or ()))
        if args.max_length is not None and longest_prompt >= args.max_length:
            continue  # nothing of the response would survive truncation
        out.append(item)
    dropped = len(rows) - len(out)
    if not out:
        raise ValueError(
            f"every prompt is at least max_length={args.max_length} tokens long: raise max_length"
        )
    if dropped:
        logger.warning(
            "dropped %d example(s) whose prompt alone fills max_length=%s", dropped, args.max_length
        )
    return Dataset.from_list(out)


# ---------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreferenceCollator:
    """Pad every response sequence of a batch into one right-padded block.

    Rows are grouped by slot, in ``slots`` order; list slots hold ``N`` rows per example, example-major (row
    ``b·N + n``), padded with empty sequences marked invalid. The output carries ``layout``, a tuple of
    ``(slot, count)`` pairs that tells the trainer where each slot's rows are.

    Args:
        pad_token_id: Padding id.
        slots: Slots to collate, in order.
        max_length: Truncation length (prompt + response, keeping the start), or ``None``.
        with_prompts: Also emit left-padded ``prompt_input_ids``/``prompt_attention_mask`` for generation.
        scalars: Per-example number columns to pass through as ``(B,)`` tensors (see :func:`scalar_columns`).
    """

    pad_token_id: int
    slots: tuple[str, ...]
    max_length: int | None = None
    with_prompts: bool = False
    scalars: tuple[str, ...] = ()

    def _rows(
        self, examples: list[dict[str, Any]], slot: str
    ) -> tuple[list[tuple[list[int], list[int]]], int]:
        if slot in LIST_SLOTS:
            lists = [ex[f"{slot}_ids"] for ex in examples]
            n = max(len(x) for x in lists)
            rows = []
            for ex, items in zip(examples, lists, strict=True):
                for j in range(n):
                    rows.append((ex["prompt_ids"], items[j] if j < len(items) else []))
            return rows, n
        # A slot with its own prompt (RDPO's rationale, MAPL's rejected x⁻) reads it from "{slot}_prompt_ids".
        return [(ex.get(f"{slot}_prompt_ids") or ex["prompt_ids"], ex[f"{slot}_ids"]) for ex in examples], 1

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        sequences: list[tuple[list[int], list[int]]] = []
        extras: list[list[float] | None] = []
        steps: list[list[int] | None] = []
        layout = []
        batch: dict[str, Any] = {}
        for slot in self.slots:
            rows, n = self._rows(examples, slot)
            layout.append((slot, n))
            sequences.extend(rows)
            for ex in examples:
                ref = ex.get(f"ref_{slot}_token_logps")
                refs = ref if slot in LIST_SLOTS else [ref]
                for j in range(n):
                    extras.append(refs[j] if ref is not None and j < len(refs) else None)
                    if slot == "list":
                        step = ex.get("list_step_ids")
                        steps.append(step[j] if step is not None and j < len(step) else None)
                    else:
                        steps.append(None)
            if slot in LIST_SLOTS:
                counts = torch.tensor([len(ex[f"{slot}_ids"]) for ex in examples])
                batch[f"{slot}_valid"] = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)
        length = max(len(p) + len(c) for p, c in sequences)
        if self.max_length is not None:
            length = min(length, self.max_length)
        m = len(sequences)
        input_ids = torch.full((m, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((m, length), dtype=torch.long)
        completion = torch.zeros((m, length), dtype=torch.long)
        step_ids = torch.zeros((m, length), dtype=torch.long)
        ref = torch.zeros((m, length))
        has_ref = any(e is not None for e in extras)
        for i, (prompt, comp) in enumerate(sequences):
            ids = (prompt + comp)[:length]
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, : len(ids)] = 1
            end = len(ids)
            completion[i, len(prompt) : end] = 1
            if steps[i] is not None and end > len(prompt):
                step_ids[i, len(prompt) : end] = torch.tensor(steps[i][: end - len(prompt)], dtype=torch.long)
            if extras[i] is not None and end > len(prompt):
                ref[i, len(prompt) : end] = torch.tensor(extras[i][: end - len(prompt)], dtype=ref.dtype)
        batch.update(input_ids=input_ids, attention_mask=attention, completion_mask=completion)
        batch["layout"] = tuple(layout)
        if "list" in self.slots:
            batch["list_step_ids"] = step_ids
            if all(ex.get("list_scores") is not None for ex in examples):
                n = dict(layout)["list"]
                scores = torch.full((len(examples), n), -math.inf)
                for b, ex in enumerate(examples):
                    scores[b, : len(ex["list_scores"])] = torch.tensor(ex["list_scores"])
                batch["list_scores"] = scores
        if has_ref:
            batch["ref_token_logps"] = ref
        if "aux_margins" in examples[0]:
            batch["aux_margins"] = torch.tensor([ex["aux_margins"] for ex in examples])
        for key in (*EXAMPLE_SCALARS, *self.scalars):
            if all(ex.get(key) is not None for ex in examples):
                batch[key] = torch.tensor([float(ex[key]) for ex in examples])
        if self.with_prompts:
            prompts = [ex["prompt_ids"] for ex in examples]
            width = max(len(p) for p in prompts)
            batch["prompt_input_ids"] = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
            batch["prompt_attention_mask"] = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):  # left padding, for generation
                batch["prompt_input_ids"][i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                batch["prompt_attention_mask"][i, width - len(p) :] = 1
        return batch


# ---------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------


def _token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of every next token: shape ``(M, L−1)``, position t scores token t+1."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits[:, :-1], input_ids[:, 1:])


@dataclass
class _Forward:
    """Per-row outputs of one model over the batch (already shifted to next-token positions)."""

    token_logps: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    logits: torch.Tensor | None = None


class PreferenceTrainer(LossOnlyTrainer):
    """Preference-optimization trainer for every objective in the registry.

    Args:
        model: A causal LM, or a path/hub id loaded with ``args.model_init_kwargs``.
        args: The :class:`PreferenceConfig`; ``args.objective`` selects the loss.
        train_dataset: Preference rows (see the module docstring).
        eval_dataset: Optional held-out rows, in the same format.
        processing_class: Tokenizer; loaded from the model path when omitted.
        ref_model: Reference model. Omitted: the trainer copies the initial policy (or, with PEFT, disables the
            adapter); reference-free objectives load none.
        peft_config: A ``peft.PeftConfig`` (e.g. ``LoraConfig``) to train an adapter instead of all weights.
        callbacks: Extra ``TrainerCallback`` instances.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: PreferenceConfig,
        train_dataset: Any,
        eval_dataset: Any | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        ref_model: PreTrainedModel | None = None,
        peft_config: Any | None = None,
        callbacks: list | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = get_objective(args.objective)
        self.hparams = self.spec.hyperparameters(args.objective_kwargs or {})
        self.plan = DataPlan.for_objective(self.spec, self.hparams)

        if isinstance(model, str):
            model_id = model
            model = AutoModelForCausalLM.from_pretrained(model_id, **(args.model_init_kwargs or {}))
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model_id)
        if processing_class is None:
            raise ValueError("processing_class is required when the model is passed as an instance")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token

        train = prepare_dataset(train_dataset, processing_class, self.spec, self.hparams, args, self.plan)
        evals = None
        if eval_dataset is not None:
            evals = prepare_dataset(eval_dataset, processing_class, self.spec, self.hparams, args, self.plan)
        # Reference log-prob sums supplied with the data (an online trainer's mixed or earlier-iterate references)
        # make a reference model unnecessary.
        self.reference_supplied = self._reference_sums_supplied(train.column_names) and (
            evals is None or self._reference_sums_supplied(evals.column_names)
        )
        needs_reference = (
            bool(self.plan.reference_slots) and not self.reference_supplied
        ) or self.plan.online_source == "reference"

        # The reference is a frozen copy of the initial weights; it must be taken before PEFT wraps the model.
        if needs_reference and ref_model is None and peft_config is None and not _is_peft(model):
            ref_model = copy.deepcopy(model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if self.spec.head is not None:
            model.add_module(_HEAD_ATTR, self.spec.head(model.config, self.hparams).to(model.dtype))
        if args.disable_dropout:
            _disable_dropout(model)
            if ref_model is not None:
                _disable_dropout(ref_model)

        # Optional slots (gold, calibration) are collated only when the data has them.
        self.slots = tuple(s for s in self.plan.slots if f"{s}_ids" in train.column_names)
        collator = PreferenceCollator(
            pad_token_id=processing_class.pad_token_id,
            slots=self.slots,
            max_length=args.max_length,
            with_prompts=self.plan.online_source is not None,
            scalars=scalar_columns(self.spec),
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train,
            eval_dataset=evals,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        self.ref_model = self._prepare_reference(ref_model) if ref_model is not None else None
        if args.precompute_ref_log_probs and self.plan.reference_slots and not self.reference_supplied:
            self.train_dataset = self._precompute_reference(self.train_dataset)
            if self.eval_dataset is not None:
                self.eval_dataset = self._precompute_reference(self.eval_dataset)
            # Keep the reference when it must still score online samples or provide full-vocabulary logits.
            live = self.plan.online_source is not None and (
                self.plan.online_source == "reference"
                or self.plan.generated_slot in self.plan.reference_slots
            )
            if not live and not self.plan.needs_logits:
                self.ref_model = None  # the reference is not needed any more; free it
        logger.info(
            "objective %s (%s) with %s; slots %s, reference %s",
            self.spec.name,
            self.spec.arxiv or "no arXiv id",
            self.hparams,
            self.slots,
            "model"
            if self.ref_model is not None
            else ("precomputed" if args.precompute_ref_log_probs else "none"),
        )

    # -- reference --------------------------------------------------------------------------------------------

    def _reference_sums_supplied(self, columns: Sequence[str]) -> bool:
        """Whether the data carries ``ref_{slot}_logps`` for every reference input (all of them sequence sums)."""
        wanted = [a for a in self.spec.inputs if a.startswith("reference_")]
        slots = [_ARG.match(a).group(2) for a in wanted if _ARG.match(a) and a.endswith("_logps")]
        return (
            bool(wanted)
            and len(slots) == len(wanted)
            and all(not a.endswith("_token_logps") for a in wanted)
            and all(f"ref_{slot}_logps" in columns for slot in slots)
        )

    def _prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    @contextlib.contextmanager
    def _reference_model(self):
        """Yield the model that plays the reference: the separate copy, or the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not _is_peft(unwrapped):
            raise RuntimeError(
                "no reference model: pass ref_model, use PEFT, or precompute reference log-probs"
            )
        with unwrapped.disable_adapter():
            yield self.model

    def _precompute_reference(self, dataset: Any) -> Any:
        """Store the reference's per-token log-probs of every response as ``ref_{slot}_token_logps`` columns."""
        from torch.utils.data import DataLoader

        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=self.data_collator)
        columns: dict[str, list[Any]] = defaultdict(list)
        device = self.accelerator.device
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.no_grad(), self._reference_model() as ref:
                logps = self._run(ref, batch["input_ids"], batch["attention_mask"]).token_logps
            mask = batch["completion_mask"][:, 1:].bool()
            n_examples = batch["input_ids"].shape[0] // sum(n for _, n in batch["layout"])
            start = 0
            for slot, n in batch["layout"]:
                rows = n_examples * n
                values = [logps[r][mask[r]].float().cpu().tolist() for r in range(start, start + rows)]
                start += rows
                if slot not in self.plan.reference_slots:
                    continue
                if slot in LIST_SLOTS:
                    valid = batch[f"{slot}_valid"].cpu()
                    for b in range(n_examples):
                        columns[f"ref_{slot}_token_logps"].append(
                            [values[b * n + j] for j in range(n) if bool(valid[b, j])]
                        )
                else:
                    columns[f"ref_{slot}_token_logps"].extend(values)
        for name, values in columns.items():
            dataset = dataset.add_column(name, values)
        logger.info("precomputed reference log-probs for %d examples", len(dataset))
        return dataset

    # -- forward passes -----------------------------------------------------------------------------------------

    def _run(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Forward:
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=self.plan.needs_hidden,
        )
        logits = outputs.logits
        hidden = None
        if self.plan.needs_hidden:
            hidden = tuple(h[:, :-1] for h in outputs.hidden_states)
        return _Forward(
            token_logps=_token_logps(logits, input_ids),
            hidden_states=hidden,
            logits=logits[:, :-1] if self.plan.needs_logits else None,
        )

    def _generate(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """Sample one response per prompt and append the samples as the generated slot's rows."""
        from trl.models import unwrap_model_for_generation

        prompts, prompt_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        tokenizer = self.processing_class
        kwargs = {
            "max_new_tokens": self.args.max_new_tokens,
            "do_sample": True,
            "temperature": self.args.generation_temperature,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        source = model
        context: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.plan.online_source == "reference":
            if self.ref_model is not None:
                source = self.ref_model
            else:
                context = self.accelerator.unwrap_model(self.model).disable_adapter()
        with torch.no_grad(), context, unwrap_model_for_generation(source, self.accelerator) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            generated = unwrapped.generate(input_ids=prompts, attention_mask=prompt_mask, **kwargs)
            unwrapped.train(was_training)
        completions = generated[:, prompts.shape[1] :]
        rows = []
        for i in range(prompts.shape[0]):
            prompt = prompts[i][prompt_mask[i].bool()].tolist()
            comp = completions[i].tolist()
            if tokenizer.eos_token_id in comp:  # keep EOS, drop what generate padded after it
                comp = comp[: comp.index(tokenizer.eos_token_id) + 1]
            while comp and comp[-1] == tokenizer.pad_token_id and comp[-1] != tokenizer.eos_token_id:
                comp.pop()
            rows.append((prompt, comp or [tokenizer.eos_token_id]))
        width = max(inputs["input_ids"].shape[1], max(len(p) + len(c) for p, c in rows))
        device = inputs["input_ids"].device
        extra_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        extra_att = torch.zeros_like(extra_ids)
        extra_comp = torch.zeros_like(extra_ids)
        for i, (p, c) in enumerate(rows):
            extra_ids[i, : len(p) + len(c)] = torch.tensor(p + c, device=device)
            extra_att[i, : len(p) + len(c)] = 1
            extra_comp[i, len(p) : len(p) + len(c)] = 1

        def widen(t: torch.Tensor, value: int | float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        out = dict(inputs)
        out["input_ids"] = torch.cat([widen(inputs["input_ids"], tokenizer.pad_token_id), extra_ids])
        out["attention_mask"] = torch.cat([widen(inputs["attention_mask"], 0), extra_att])
        out["completion_mask"] = torch.cat([widen(inputs["completion_mask"], 0), extra_comp])
        for key in ("list_step_ids", "ref_token_logps"):
            if key in inputs:
                out[key] = torch.cat(
                    [widen(inputs[key], 0), torch.zeros_like(extra_ids, dtype=inputs[key].dtype)]
                )
        out["layout"] = (*inputs["layout"], (self.plan.generated_slot, 1))
        out["_generated_rows"] = len(rows)
        return out

    # -- loss --------------------------------------------------------------------------------------------------

    def _objective_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """Compute every tensor the objective's signature asks for."""
        if self.plan.online_source is not None:
            inputs = self._generate(model, inputs)
        layout: tuple[tuple[str, int], ...] = inputs["layout"]
        rows_total = inputs["input_ids"].shape[0]
        generated = inputs.get("_generated_rows", 0)
        batch_size = (rows_total - generated) // max(
            sum(n for s, n in layout if s != self.plan.generated_slot), 1
        )
        spans: dict[str, tuple[int, int, int]] = {}
        start = 0
        for slot, n in layout:
            rows = generated if slot == self.plan.generated_slot else batch_size * n
            spans[slot] = (start, start + rows, n)
            start += rows
        # Slots the data did not provide fall back to the preferred responses (gold for Triple PO, calibration
        # samples for offline VPO).
        for slot in ("gold", "calibration"):
            if slot not in spans and "chosen" in spans:
                spans[slot] = spans["chosen"]

        policy = self._run(model, inputs["input_ids"], inputs["attention_mask"])
        mask = inputs["completion_mask"][:, 1:].to(policy.token_logps.dtype)

        reference_logits: torch.Tensor | None = None
        ref_token_logps: torch.Tensor | None = None
        if self.plan.reference_slots:
            precomputed = "ref_token_logps" in inputs and not self.plan.needs_logits
            # Only the rows the objective compares with the reference go through it (not rationales, gold or
            # degree variants), and precomputed rows not at all.
            live_slots = [
                s
                for s in self.plan.reference_slots
                if s in spans
                and (not precomputed or s == self.plan.generated_slot)
                and f"ref_{s}_logps" not in inputs
            ]
            wanted: set[int] = set()
            for slot in live_slots:
                lo, hi, _ = spans[slot]
                wanted.update(range(lo, hi))
            rows = sorted(wanted)
            ref_token_logps = torch.zeros_like(policy.token_logps)
            if precomputed:
                ref_token_logps = inputs["ref_token_logps"][:, 1:].to(policy.token_logps.dtype)
            if rows:
                index = torch.tensor(rows, device=inputs["input_ids"].device)
                with torch.no_grad(), self._reference_model() as ref:
                    reference = self._run(ref, inputs["input_ids"][index], inputs["attention_mask"][index])
                ref_token_logps = ref_token_logps.index_copy(
                    0, index, reference.token_logps.to(ref_token_logps.dtype)
                )
                if reference.logits is not None:
                    reference_logits = policy.logits.new_zeros(policy.logits.shape)
                    reference_logits = reference_logits.index_copy(
                        0, index, reference.logits.to(policy.logits.dtype)
                    )

        def shape(t: torch.Tensor, slot: str, sliced: bool = False) -> torch.Tensor:
            lo, hi, n = spans[slot]
            part = t if sliced else t[lo:hi]
            if slot in LIST_SLOTS:
                return part.reshape(batch_size, n, *part.shape[1:])
            return part

        head_out: dict[str, dict[str, torch.Tensor]] = {}

        def head(slot: str) -> dict[str, torch.Tensor]:
            if slot not in head_out:
                lo, hi, _ = spans[slot]
                module = getattr(self.accelerator.unwrap_model(model), _HEAD_ATTR)
                hidden = tuple(h[lo:hi] for h in policy.hidden_states)
                head_out[slot] = module(hidden, mask[lo:hi])
            return head_out[slot]

        values: dict[str, Any] = {}
        for arg in self.spec.inputs:
            match = _ARG.match(arg)
            if match:
                who, slot, what = match.groups()
                if who == "reference" and slot not in self.plan.reference_slots:
                    values[arg] = None
                    continue
                if who == "reference" and what == "logps" and f"ref_{slot}_logps" in inputs:
                    values[arg] = inputs[f"ref_{slot}_logps"].to(
                        policy.token_logps.dtype
                    )  # user-supplied sums
                    continue
                source = policy.token_logps if who == "policy" else ref_token_logps
                if what == "hidden_states":
                    values[arg] = shape(policy.hidden_states[-1], slot)
                elif what == "token_logps":
                    values[arg] = shape(source, slot)
                else:
                    values[arg] = shape(masked_sum(source, mask), slot)
            elif arg.endswith("_token_kl"):
                slot = arg[: -len("_token_kl")]
                lo, hi, _ = spans[slot]
                values[arg] = token_kl(policy.logits[lo:hi], reference_logits[lo:hi]).to(mask.dtype)
            elif arg in self.plan.head_keys:
                for key in ("reward_mask", "kl_mask", "degree_logits"):
                    if arg.endswith("_" + key):
                        slot = arg[: -len(key) - 1]
                        values[arg] = shape(head(slot)[key], slot, sliced=True)
            elif arg.endswith("_mask"):
                values[arg] = shape(mask, arg[: -len("_mask")])
            elif arg.endswith("_lengths"):
                values[arg] = shape(mask.sum(-1), arg[: -len("_lengths")])
            elif arg.endswith("_valid"):
                values[arg] = inputs[arg]
            elif arg == "list_step_ids":
                values[arg] = shape(inputs["list_step_ids"][:, 1:], "list")
            elif arg in inputs:
                values[arg] = inputs[arg]
            elif arg in self.spec.optional_inputs:
                values[arg] = None
            else:
                raise KeyError(f"the trainer cannot provide {arg!r} for objective {self.spec.name!r}")
        self._last_policy_logps = {
            slot: shape(masked_sum(policy.token_logps, mask), slot).detach()
            for slot in ("chosen", "rejected")
            if slot in spans
        }
        return values

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any | None = None,
    ):
        """Run the objective on one batch and record its metrics."""
        mode = "train" if self.model.training else "eval"
        values = self._objective_inputs(model, inputs)
        out = self.spec.fn(**values, **self.hparams)
        self._record(mode, out)
        return (out.loss, out) if return_outputs else out.loss

    def _record(self, mode: str, out: Any) -> None:
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        chosen, rejected = gather(out.chosen_rewards), gather(out.rejected_rewards)
        metrics["rewards/chosen"].append(chosen.mean().item())
        metrics["rewards/rejected"].append(rejected.mean().item())
        metrics["rewards/margins"].append((chosen - rejected).mean().item())
        metrics["rewards/accuracies"].append((chosen > rejected).float().mean().item())
        logps = getattr(self, "_last_policy_logps", {})
        if "chosen" in logps and "rejected" in logps:
            c, r = gather(logps["chosen"]), gather(logps["rejected"])
            metrics["logps/chosen"].append(c.mean().item())
            metrics["logps/rejected"].append(r.mean().item())
        for key, value in out.metrics.items():
            metrics[f"objective/{key}"].append(gather(value.reshape(1)).float().mean().item())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Auxiliary heads (SparsePO masks, SPO's degree classifier) are training-time only: keep them out of the
        # model checkpoint so it reloads as a plain causal LM, and store them beside it.
        module = self.accelerator.unwrap_model(self.model)
        head = getattr(module, _HEAD_ATTR, None)
        if head is not None:
            if state_dict is None:
                state_dict = module.state_dict()
            state_dict = {k: v for k, v in state_dict.items() if _HEAD_ATTR not in k}
        super()._save(output_dir, state_dict=state_dict)
        if head is not None and self.args.should_save:
            target = Path(output_dir or self.args.output_dir)
            torch.save(head.state_dict(), target / f"{_HEAD_ATTR}.pt")


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def completion_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    *,
    max_length: int | None = 1024,
    batch_size: int = 8,
) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of each row's ``chosen`` and ``rejected`` completion under ``model``.

    Rows are tokenised, truncated and padded exactly as :class:`PreferenceTrainer` does for a pair objective, and
    the log-probabilities come from the same function, so a number computed here for a model equals the
    ``policy_*_logps`` the trainer computes for it: this is how an online trainer supplies reference,
    previous-iterate and mixed log-probs (``ref_*_logps``, ``previous_*_logps``) without a reference model.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        rows: ``{"prompt", "chosen", "rejected"}`` rows; every prompt must be shorter than ``max_length``.
        max_length: Truncation length (prompt + response), as in :class:`PreferenceConfig`.
        batch_size: Rows per forward pass.

    Returns:
        ``(chosen_logps, rejected_logps)``, one float per row.
    """
    from types import SimpleNamespace

    spec = get_objective("dpo")
    plan = DataPlan.for_objective(spec, spec.defaults)
    # Only max_length matters for a plain pair objective; the other PreferenceConfig fields serve other objectives.
    data = prepare_dataset(rows, tokenizer, spec, spec.defaults, SimpleNamespace(max_length=max_length), plan)
    if len(data) != len(rows):
        raise ValueError(
            f"{len(rows) - len(data)} row(s) have prompts of max_length={max_length} tokens or more"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PreferenceCollator(pad_token_id=pad, slots=plan.slots, max_length=max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for begin in range(0, len(data), batch_size):
            batch = collator([data[i] for i in range(begin, min(begin + batch_size, len(data)))])
            ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
            sums = masked_sum(_token_logps(logits, ids), batch["completion_mask"][:, 1:].to(device)).float()
            half = sums.shape[0] // 2
            chosen.extend(sums[:half].cpu().tolist())
            rejected.extend(sums[half:].cpu().tolist())
    model.train(was_training)
    return chosen, rejected


def evaluate_margins(trainer: PreferenceTrainer, dataset: Any | None = None) -> dict[str, float]:
    """Evaluate and return the reward and log-prob margins of the held-out pairs.

    Args:
        trainer: A constructed trainer.
        dataset: Raw preference rows; the trainer's eval set when omitted.

    Returns:
        ``{"rewards/margins", "rewards/accuracies", "logps/margin"}`` averaged over the set.
    """
    if dataset is not None:
        dataset = prepare_dataset(
            dataset, trainer.processing_class, trainer.spec, trainer.hparams, trainer.args, trainer.plan
        )
        if (
            trainer.args.precompute_ref_log_probs
            and trainer.plan.reference_slots
            and trainer.ref_model is not None
        ):
            dataset = trainer._precompute_reference(dataset)
    metrics = trainer.evaluate(eval_dataset=dataset)
    out = {
        "rewards/margins": metrics["eval_rewards/margins"],
        "rewards/accuracies": metrics["eval_rewards/accuracies"],
    }
    if "eval_logps/chosen" in metrics:
        out["logps/margin"] = metrics["eval_logps/chosen"] - metrics["eval_logps/rejected"]
    return out
