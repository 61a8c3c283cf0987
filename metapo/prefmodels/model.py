"""The networks behind metapo's reward and preference models, and how they are saved.

Four kinds, one directory format (the backbone as ``save_pretrained`` writes it, the tokenizer, and
``metapo_rm.json`` describing the head):

- ``bt``: a scalar Bradley–Terry reward model, ``AutoModelForSequenceClassification`` with one label, trained by TRL's
  ``RewardTrainer``.
- ``gpm``: a general preference model (arXiv 2410.02197). A sequence-classification head with ``2k`` outputs gives the
  embedding ``v(x, y)``; with ``gate`` it has ``k`` more outputs, read at the prompt's last token, for the prompt
  gate ``λ(x)``. Optional L2 normalisation of ``v`` (off in the authors' code).
- ``vector``: a multi-attribute reward model (DPA, arXiv 2402.18571), one output per attribute, regressed on ratings.
- ``themis``: a causal LM with a scalar reward head (arXiv 2310.01045): the LM writes tool-use traces, the head reads
  the last token. Saved as the causal LM plus ``reward_head.safetensors``.

Every head is pooled at the last attended token of right-padded inputs, as ``*ForSequenceClassification`` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metapo.files import atomic_write_text
from metapo.prefmodels.losses import gpm_gates

META_FILE = "metapo_rm.json"
HEAD_FILE = "reward_head.safetensors"
KINDS = ("bt", "gpm", "vector", "themis")
FORMAT_VERSION = 1


@dataclass
class HeadSpec:
    """What a saved model is and how to read its head (stored as ``metapo_rm.json``).

    Attributes:
        kind: ``bt``, ``gpm``, ``vector`` or ``themis``.
        gpm_dim: GPM embedding size ``2k`` (even).
        tau: GPM temperature; ``P(i ≻ j) = σ(s(i, j)/τ)``.
        gate: GPM prompt gate ``λ(x)`` on (else all blocks weigh 1).
        normalize: L2-normalise GPM embeddings.
        attributes: Attribute names of a ``vector`` model, in head order.
        direction: Default preference direction of a ``vector`` model (unit vector over ``attributes``).
        alpha: Themis weight of the LM terms.
        beta: Themis weight of observation spans.
        omega: Themis weight of the rationale span.
        corpus: Themis lookup corpus (JSONL or text) used when scoring; ``None``: calculator only.
        max_steps: Themis tool calls per scored response.
        max_new_tokens: Themis tokens generated per trace line.
        max_length: Truncation length of scored sequences.
    """

    kind: str = "bt"
    gpm_dim: int = 2
    tau: float = 1.0
    gate: bool = False
    normalize: bool = False
    attributes: list[str] = field(default_factory=list)
    direction: list[float] | None = None
    alpha: float = 1.0
    beta: float = 1.0
    omega: float = 1.0
    corpus: str | None = None
    max_steps: int = 4
    max_new_tokens: int = 48
    max_length: int | None = 1024

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "gpm" and (self.gpm_dim < 2 or self.gpm_dim % 2):
            raise ValueError(f"gpm_dim must be an even number >= 2, got {self.gpm_dim}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.kind == "vector" and not self.attributes:
            raise ValueError("a vector reward model needs 'attributes' (e.g. [helpfulness, verbosity])")
        if self.direction is not None:
            if len(self.direction) != len(self.attributes):
                raise ValueError(
                    f"direction {self.direction} has {len(self.direction)} entries for "
                    f"{len(self.attributes)} attributes {self.attributes}"
                )
            norm = sum(x * x for x in self.direction) ** 0.5
            if norm == 0:
                raise ValueError("direction must not be the zero vector")
            self.direction = [float(x) / norm for x in self.direction]

    @property
    def out_dim(self) -> int:
        """Outputs of the pooled head."""
        if self.kind == "gpm":
            return self.gpm_dim + (self.gpm_dim // 2 if self.gate else 0)
        if self.kind == "vector":
            return len(self.attributes)
        return 1

    def save(self, directory: Path) -> None:
        data = {"format": FORMAT_VERSION, **asdict(self)}
        atomic_write_text(Path(directory) / META_FILE, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> HeadSpec:
        path = Path(directory) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} holds no {META_FILE}: it was not saved by `metapo train-rm` (or the save was cut short)"
            )
        data = json.loads(path.read_text("utf-8"))
        version = data.pop("format", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format {version!r} is not {FORMAT_VERSION}; retrain or upgrade metapo")
        return cls(**data)


@dataclass
class HeadOutput:
    """Pooled head outputs of one batch.

    Attributes:
        values: ``(B, d)``: the reward (``d = 1``), GPM embedding (``d = 2k``) or attribute scores.
        gates: GPM prompt gates ``(B, k)``, or ``None``.
        token_logps: Log-probability of every next token ``(B, T−1)`` (Themis, when asked for).
    """

    values: torch.Tensor
    gates: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each right-padded row."""
    return (attention_mask.sum(-1) - 1).clamp(min=0)


def _hidden_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class PreferenceNet(nn.Module):
    """A backbone and its head, as one module the trainer optimises and the scorer runs.

    Args:
        spec: The head description.
        backbone: ``*ForSequenceClassification`` (``bt``, ``gpm``, ``vector``) or ``*ForCausalLM`` (``themis``).
        reward_head: Themis only: ``Linear(hidden, 1, bias=False)`` on the last hidden state.
    """

    def __init__(self, spec: HeadSpec, backbone: nn.Module, reward_head: nn.Linear | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.reward_head = reward_head
        if spec.kind == "themis" and reward_head is None:
            raise ValueError("a themis model needs a reward head")
        self.hidden_size = _hidden_size(backbone.config)

    @property
    def config(self) -> Any:
        return self.backbone.config

    @classmethod
    def create(cls, spec: HeadSpec, model_name_or_path: str, **load_kwargs: Any) -> PreferenceNet:
        """A new model from a pretrained backbone, with a freshly initialised head."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        if spec.kind == "themis":
            lm = AutoModelForCausalLM.from_pretrained(model_name_or_path, **load_kwargs)
            hidden = _hidden_size(lm.config)
            head = nn.Linear(hidden, 1, bias=False, dtype=lm.dtype)
            # The GPM authors' initialisation of value heads: small, so early rewards sit near 0.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1))
            return cls(spec, lm, head)
        backbone = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path, num_labels=spec.out_dim, **load_kwargs
        )
        return cls(spec, backbone)

    @classmethod
    def load(cls, directory: str | Path, **load_kwargs: Any) -> PreferenceNet:
        """Load a model saved by :meth:`save` (or a ``bt`` model saved by TRL's ``RewardTrainer``)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        directory = Path(directory)
        spec = HeadSpec.load(directory)
        if spec.kind == "themis":
            lm = AutoModelForCausalLM.from_pretrained(directory, **load_kwargs)
            head = nn.Linear(_hidden_size(lm.config), 1, bias=False, dtype=lm.dtype)
            head.load_state_dict(load_file(str(directory / HEAD_FILE)))
            return cls(spec, lm, head)
        backbone = AutoModelForSequenceClassification.from_pretrained(directory, **load_kwargs)
        if backbone.config.num_labels != spec.out_dim:
            raise ValueError(
                f"{directory}: the head has {backbone.config.num_labels} outputs, {META_FILE} expects {spec.out_dim}"
            )
        return cls(spec, backbone)

    def save(self, directory: str | Path, tokenizer: Any | None = None) -> None:
        """Write the backbone, the Themis head, the tokenizer and ``metapo_rm.json`` (written last: its presence
        marks a complete save)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        if self.reward_head is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.reward_head.state_dict().items()}
            save_file(state, str(directory / HEAD_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        self.spec.save(directory)

    def _pooled_score_head(self) -> nn.Module:
        head = getattr(self.backbone, "score", None)
        if head is None:
            raise TypeError(f"{type(self.backbone).__name__} has no 'score' head for the GPM prompt gate")
        return head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor | None = None,
        *,
        need_token_logps: bool = False,
    ) -> HeadOutput:
        """Run the backbone and read the head.

        Args:
            input_ids: Right-padded token ids ``(B, T)``.
            attention_mask: ``(B, T)``.
            prompt_lengths: Prompt tokens per row (GPM gate: read at index ``prompt_length − 1``).
            need_token_logps: Themis: also return next-token log-probabilities.
        """
        spec = self.spec
        if spec.kind == "themis":
            return self._forward_themis(input_ids, attention_mask, need_token_logps)
        want_hidden = spec.kind == "gpm" and spec.gate
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=want_hidden,
            use_cache=False,
        )
        values = out.logits
        gates = None
        if spec.kind == "gpm":
            values = out.logits[:, : spec.gpm_dim]
            if spec.gate:
                if prompt_lengths is None:
                    raise ValueError("a gated GPM needs the prompt lengths")
                hidden = out.hidden_states[-1]
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                prompt_end = (prompt_lengths.to(hidden.device) - 1).clamp(min=0)
                gate_logits = self._pooled_score_head()(hidden[rows, prompt_end])[:, spec.gpm_dim :]
                gates = gpm_gates(gate_logits.float(), self.hidden_size)
            if spec.normalize:
                values = F.normalize(values, p=2, dim=-1)
        return HeadOutput(values=values, gates=gates)

    def _forward_themis(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, need_token_logps: bool
    ) -> HeadOutput:
        from trl.trainer.utils import selective_log_softmax

        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=0 if need_token_logps else 1,
        )
        hidden = out.hidden_states[-1]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
        values = self.reward_head(pooled)
        token_logps = None
        if need_token_logps:
            token_logps = selective_log_softmax(out.logits[:, :-1], input_ids[:, 1:])
        return HeadOutput(values=values, token_logps=token_logps)
