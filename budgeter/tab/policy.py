"""The fast TAB policy: features → a small network → a distribution over the budget ladder.

Inference is NumPy only (two hidden layers of tanh units), so the gateway runs it per request in
microseconds without torch. Training (:mod:`thrifty.budgeter.tab.grpo`) uses a torch twin with the
same layout and exports its weights here.

Levels above what is left of the problem's budget B are masked out (B is a hard limit in the gateway:
a turn never gets more thinking than the session has left). When no level fits, the turn gets a
budget of 0: no thinking, just the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

NEG = -1e9


def allowed(ladder: Sequence[int], remaining: int | None) -> np.ndarray:
    """A boolean mask over the ladder: the levels that fit in what is left of B."""
    levels = np.asarray(ladder)
    if remaining is None:
        return np.ones(len(levels), dtype=bool)
    return np.asarray(levels <= remaining)


def masked_softmax(logits: np.ndarray, mask: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` over the masked-in entries (zeros elsewhere)."""
    scaled = np.where(mask, logits / temperature, NEG)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.where(mask, np.exp(scaled), 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    return np.asarray(weights / np.where(total > 0, total, 1.0))


def masked_log_softmax(logits: torch.Tensor, masks: np.ndarray, temperature: float) -> torch.Tensor:
    """The torch form of :func:`masked_softmax`, in logs: what the learners' GRPO ratios are made of."""
    import torch

    allowed_t = torch.from_numpy(np.asarray(masks, dtype=bool))
    return torch.log_softmax(torch.where(allowed_t, logits / temperature, torch.tensor(NEG)), dim=-1)


@dataclass(frozen=True)
class FastPolicy:
    ladder: tuple[int, ...]
    names: tuple[str, ...]  # the feature layout (thrifty.budgeter.tab.features.feature_names)
    mean: np.ndarray  # feature standardisation, from the training contexts
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight (in, out), bias (out,)); tanh between

    def __post_init__(self) -> None:
        width = len(self.names)
        if self.mean.shape != (width,) or self.scale.shape != (width,):
            raise ValueError(f"the standardisation has the wrong shape for {width} features")
        for weight, bias in self.layers:
            if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
                raise ValueError(f"layer of shape {weight.shape} / {bias.shape} does not follow one of width {width}")
            width = weight.shape[1]
        if width != len(self.ladder):
            raise ValueError(f"the network has {width} outputs for a ladder of {len(self.ladder)} levels")

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, dtype=np.float32) - self.mean) / self.scale
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if index < len(self.layers) - 1:
                x = np.tanh(x)
        return np.asarray(x)

    def distribution(self, features: np.ndarray, mask: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return masked_softmax(self.logits(features), mask, temperature)

    def choose(self, features: np.ndarray, remaining: int | None) -> tuple[int, np.ndarray]:
        """The greedy level for one feature row and its distribution (a budget of 0 if none fits)."""
        mask = allowed(self.ladder, remaining)
        probabilities = self.distribution(features[None, :], mask[None, :])[0]
        if not mask.any():
            return 0, probabilities
        return self.ladder[int(np.argmax(probabilities))], probabilities
