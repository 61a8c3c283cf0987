"""Training reward and preference models: TRL's ``RewardTrainer`` for Bradley–Terry, a thin ``Trainer`` for the rest.

``train_reward_model(config)`` is what ``metapo train-rm`` runs. A ``bt`` model goes through TRL 1.16's
``RewardTrainer`` unchanged. TRL has no equivalent for the other kinds (its trainer requires a single-output head), so
:class:`PreferenceModelTrainer` subclasses ``transformers.Trainer`` with one ``compute_loss``:

- ``gpm``: ``−log σ(s(y_w, y_l)/τ)`` on the skew-symmetric score (optionally prompt-gated);
- ``vector``: mean squared error against the attribute ratings (DPA's multi-objective reward model);
- ``themis``: Bradley–Terry plus the weighted LM losses on tool, observation and rationale spans.

The output directory is loadable by :class:`metapo.prefmodels.scorer.RewardModel`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainingArguments

from metapo.prefmodels.data import RewardCollator, encode_rows, load_rows
from metapo.prefmodels.losses import (
    gpm_loss,
    skew_symmetric_score,
    themis_lm_terms,
    themis_loss,
)
from metapo.prefmodels.model import KINDS, HeadSpec, PreferenceNet
from metapo.train.loss_trainer import LossOnlyTrainer

logger = logging.getLogger(__name__)


@dataclass
class RewardModelConfig(TrainingArguments):
    """Everything ``metapo train-rm`` needs: ``TrainingArguments`` plus the model, the data and the head.

    Defaults that differ from ``TrainingArguments``: ``learning_rate`` 1e-4 (TRL's ``RewardConfig``),
    ``logging_steps`` 10, ``remove_unused_columns`` False.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    kind: str = field(default="bt", metadata={"help": "bt, gpm, vector or themis."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Backbone: a local path, a hub id, or 'tiny' (a tiny random model)."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained (e.g. {dtype: bfloat16})."}
    )
    dataset_name: str = field(
        default="builtin",
        metadata={
            "help": "builtin (pairs), builtin:cyclic (an intransitive triple), builtin:themis (pairs with tool "
            "traces), builtin:ratings (attribute ratings), or a .jsonl/.json file."
        },
    )
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of rows for evaluation."}
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Longest sequence in tokens; longer ones lose their start."}
    )
    gpm_dim: int = field(default=2, metadata={"help": "GPM: embedding size 2k (even)."})
    tau: float | None = field(
        default=None,
        metadata={"help": "GPM: temperature τ (default 1 for 2 dimensions, else 0.1, as the authors)."},
    )
    gate: bool = field(
        default=False, metadata={"help": "GPM: learn the prompt gate λ(x) over the 2-D blocks."}
    )
    normalize: bool = field(default=False, metadata={"help": "GPM: L2-normalise the embeddings."})
    attributes: list[str] = field(
        default_factory=lambda: ["helpfulness", "verbosity"],
        metadata={"help": "vector: attribute names, in rating order."},
    )
    direction: list[float] | None = field(
        default=None, metadata={"help": "vector: default preference direction when scoring (normalised)."}
    )
    alpha: float = field(
        default=1.0, metadata={"help": "Themis: weight of the LM terms (0 = Bradley–Terry)."}
    )
    beta: float = field(default=1.0, metadata={"help": "Themis: weight of observation spans."})
    omega: float = field(default=1.0, metadata={"help": "Themis: weight of the rationale span."})
    corpus: str | None = field(
        default=None,
        metadata={"help": "Themis: lookup corpus for scoring (JSONL/text; 'builtin' = the shipped one)."},
    )
    tool_steps: int = field(default=4, metadata={"help": "Themis: most tool calls per scored response."})
    trace_tokens: int = field(
        default=48, metadata={"help": "Themis: tokens generated per trace line when scoring."}
    )
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "bt: TRL's reward-centring coefficient."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the backbone."})
    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer reads its columns."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(self.model_init_kwargs, str):
            import json

            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        self.head_spec()  # fail on a bad head now, not after the model has loaded

    def head_spec(self) -> HeadSpec:
        """The :class:`HeadSpec` saved with the model."""
        tau = self.tau if self.tau is not None else (1.0 if self.gpm_dim == 2 else 0.1)
        corpus = self.corpus
        if corpus == "builtin":
            from metapo.prefmodels.data import builtin_corpus_path

            corpus = builtin_corpus_path()
        return HeadSpec(
            kind=self.kind,
            gpm_dim=self.gpm_dim,
            tau=tau,
            gate=self.gate,
            normalize=self.normalize,
            attributes=list(self.attributes) if self.kind == "vector" else [],
            direction=list(self.direction) if self.kind == "vector" and self.direction else None,
            alpha=self.alpha,
            beta=self.beta,
            omega=self.omega,
            corpus=corpus,
            max_steps=self.tool_steps,
            max_new_tokens=self.trace_tokens,
            max_length=self.max_length,
        )


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PreferenceModelTrainer(LossOnlyTrainer):
    """``transformers.Trainer`` for the ``gpm``, ``vector`` and ``themis`` heads (see the module docstring).

    Args:
        model: The :class:`PreferenceNet` to train.
        args: The config.
        train_dataset: Encoded items (:func:`metapo.prefmodels.data.encode_rows`).
        eval_dataset: Optional encoded held-out items.
        processing_class: The tokenizer, saved with the model.
        callbacks: Extra ``TrainerCallback`` instances.
    """

    def __init__(
        self,
        model: PreferenceNet,
        args: RewardModelConfig,
        train_dataset: Sequence[dict[str, Any]],
        eval_dataset: Sequence[dict[str, Any]] | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
    ) -> None:
        if model.spec.kind == "bt":
            raise ValueError("train bt models with TRL's RewardTrainer (train_reward_model does)")
        if processing_class is None or processing_class.pad_token_id is None:
            raise ValueError("processing_class must be a tokenizer with a pad token")
        super().__init__(
            model=model,
            args=args,
            data_collator=RewardCollator(pad_token_id=processing_class.pad_token_id),
            train_dataset=list(train_dataset),
            eval_dataset=list(eval_dataset) if eval_dataset is not None else None,
            processing_class=processing_class,
            callbacks=callbacks,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The kind's loss on one batch, with accuracy and margin metrics."""
        spec: HeadSpec = self.accelerator.unwrap_model(model).spec
        mode = "train" if model.training else "eval"
        metrics = self._metrics[mode]
        margin = inputs.get("margin")
        if spec.kind == "vector":
            out = model(inputs["input_ids"], inputs["attention_mask"], inputs["prompt_lengths"])
            loss = F.mse_loss(out.values.float(), inputs["labels"])
            metrics["mse"].append(loss.item())
            return (loss, out) if return_outputs else loss
        need_lm = spec.kind == "themis" and spec.alpha != 0
        out = model(
            inputs["input_ids"], inputs["attention_mask"], inputs["prompt_lengths"], need_token_logps=need_lm
        )
        if spec.kind == "gpm":
            v_chosen, v_rejected = out.values.float().chunk(2)
            gates = None if out.gates is None else out.gates.chunk(2)[0]
            loss = gpm_loss(v_chosen, v_rejected, tau=spec.tau, gates=gates, margin=margin).mean()
            with torch.no_grad():
                score = skew_symmetric_score(v_chosen, v_rejected, gates) / spec.tau
                metrics["accuracy"].append((score > 0).float().mean().item())
                metrics["prob"].append(torch.sigmoid(score).mean().item())
        else:  # themis
            chosen, rejected = out.values.float().squeeze(-1).chunk(2)
            terms = None
            if need_lm:
                per_row = themis_lm_terms(
                    out.token_logps.float(), inputs["kinds"][:, 1:], inputs["steps"][:, 1:]
                )
                # A pair's LM terms cover the traces of both of its responses.
                terms = tuple(sum(t.chunk(2)) for t in per_row)
            loss, parts = themis_loss(
                chosen, rejected, terms, alpha=spec.alpha, beta=spec.beta, omega=spec.omega, margin=margin
            )
            for key, value in parts.items():
                metrics[key].append(value.item())
            with torch.no_grad():
                metrics["accuracy"].append((chosen > rejected).float().mean().item())
                metrics["margin"].append((chosen - rejected).mean().item())
        return (loss, out) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        target = Path(output_dir or self.args.output_dir)
        self.accelerator.unwrap_model(self.model).save(target, self.processing_class)
        torch.save(self.args, target / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        saved = PreferenceNet.load(resume_from_checkpoint)
        (model or self.model).load_state_dict(saved.state_dict())


def _resolve_model(config: RewardModelConfig) -> str:
    path = config.model_name_or_path
    if not path:
        raise ValueError("set model_name_or_path (a local path, a hub id, or 'tiny' for a tiny random model)")
    if path == "tiny":
        from metapo.models.tiny import build_tiny_model

        return str(build_tiny_model(Path(config.output_dir) / "tiny-init"))
    return path


def _split(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict] | None]:
    if fraction <= 0:
        return rows, None
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(rows)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _init_kwargs(config: RewardModelConfig) -> dict[str, Any]:
    kwargs = dict(config.model_init_kwargs or {})
    if not torch.cuda.is_available():
        kwargs.setdefault("dtype", torch.float32)
    return kwargs


def train_reward_model(
    config: RewardModelConfig,
    train_rows: Sequence[Mapping[str, Any]] | None = None,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    *,
    resume: bool = False,
) -> Path:
    """Train a reward or preference model and save it to ``config.output_dir``.

    Args:
        config: Model, data, head and training settings.
        train_rows: Rows to train on (default: ``config.dataset_name``, split by ``eval_fraction``).
        eval_rows: Held-out rows (default: the split).
        resume: Continue from the last checkpoint in ``output_dir``.

    Returns:
        The output directory, loadable with :meth:`metapo.prefmodels.scorer.RewardModel.load`.
    """
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    if train_rows is None:
        train_rows, split_eval = _split(load_rows(config.dataset_name), config.eval_fraction, config.seed)
        eval_rows = eval_rows if eval_rows is not None else split_eval
    spec = config.head_spec()
    model_path = _resolve_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    output_dir = Path(config.output_dir)
    checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s; training from the start", output_dir)

    if spec.kind == "bt":
        trainer = _trl_reward_trainer(config, model_path, tokenizer, list(train_rows), eval_rows)
    else:
        from transformers import set_seed

        set_seed(config.seed)  # the new head's initialisation must not depend on the caller's RNG state
        model = PreferenceNet.create(spec, model_path, **_init_kwargs(config))
        model.backbone.config.pad_token_id = tokenizer.pad_token_id
        if config.disable_dropout:
            _disable_dropout(model)
        train = encode_rows(list(train_rows), tokenizer, spec)
        evals = encode_rows(list(eval_rows), tokenizer, spec) if eval_rows else None
        trainer = PreferenceModelTrainer(model, config, train, evals, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(output_dir))
    if spec.kind == "bt" and trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        spec.save(output_dir)  # last: marks a complete save
    return output_dir


def _trl_reward_trainer(
    config: RewardModelConfig,
    model_path: str,
    tokenizer: Any,
    train_rows: list[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]] | None,
) -> Any:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    def dataset(rows: Sequence[Mapping[str, Any]]) -> Dataset:
        keep = ("prompt", "chosen", "rejected", "margin")
        return Dataset.from_list([{k: r[k] for k in keep if k in r} for r in rows])

    shared = {f.name for f in fields(TrainingArguments) if f.init}
    args = {k: getattr(config, k) for k in shared if hasattr(config, k)}
    # Values TrainingArguments derives in __post_init__ must not be passed back as if the user set them.
    for derived in ("logging_dir", "distributed_state", "deepspeed_plugin"):
        args.pop(derived, None)
    args.update(
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        disable_dropout=config.disable_dropout,
        model_init_kwargs={**_init_kwargs(config)},
    )
    reward_config = RewardConfig(**args)
    return RewardTrainer(
        model=model_path,
        args=reward_config,
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
    )
