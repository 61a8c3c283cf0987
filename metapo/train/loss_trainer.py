"""A `transformers.Trainer` base for trainers whose whole job is a custom loss and its metrics."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer


class LossOnlyTrainer(Trainer):
    """Trainer that evaluates by its loss alone and logs the metrics its ``compute_loss`` collects.

    Subclasses append floats to ``self._metrics[mode][name]`` (mode ``"train"`` or ``"eval"``) while computing
    the loss; each log line carries their means since the last one. Losses are batch means, so Trainer divides
    by the accumulation steps itself.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation computes the loss (there are no labels to predict)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged metrics of the current mode to the log."""
        mode = "train" if self.model.training else "eval"
        averaged = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            averaged = {f"eval_{k}": v for k, v in averaged.items()}
        logs.update(averaged)
        super().log(logs, start_time)
        self._metrics[mode].clear()
