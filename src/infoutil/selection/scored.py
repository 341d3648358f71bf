"""Patches as the judge teacher scored them: the type every method hands to the diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax probability of each row's true class, in float64."""
    prob = torch.softmax(logits.to(torch.float64), 1)
    return prob.gather(1, labels.to(torch.int64).to(prob.device)[:, None])[:, 0]


@dataclass
class ScoredPatches:
    """Patches as the judge teacher scored them, one row each."""

    source: torch.Tensor  # int64 [P]: index of the source training image
    label: torch.Tensor  # int64 [P]: its class
    box: torch.Tensor  # int64 [P, 4]: (top, left, height, width) in the source image
    prob: torch.Tensor  # float64 [P]: the teacher's probability of the true class
    pred: torch.Tensor  # int64 [P]: the teacher's predicted class
    noise_free: torch.Tensor | None = None  # bool [P]: InfoUtil's noise-free crop

    def take(self, index: torch.Tensor) -> ScoredPatches:
        return ScoredPatches(
            self.source[index],
            self.label[index],
            self.box[index],
            self.prob[index],
            self.pred[index],
            None if self.noise_free is None else self.noise_free[index],
        )

    @classmethod
    def from_logits(
        cls,
        source: torch.Tensor,
        label: torch.Tensor,
        box: torch.Tensor,
        logits: torch.Tensor,
        noise_free: torch.Tensor | None = None,
    ) -> ScoredPatches:
        return cls(
            source.to(torch.int64),
            label.to(torch.int64),
            box.to(torch.int64).reshape(-1, 4),
            true_class_prob(logits, label),
            logits.argmax(1).to(torch.int64),
            noise_free,
        )
