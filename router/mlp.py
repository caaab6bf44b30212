"""The MLP router of "Federate the Router": a shared trunk, one head per model.

Each head gives, for a query embedding, an accuracy logit and a normalised log-cost. Clients evaluated
only some models, so the loss counts only observed (query, model) cells. The same class trains (locally,
centrally or in a Flower ClientApp) and serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from thrifty.router.outcomes import OutcomeTable


@dataclass(frozen=True, slots=True)
class CostScale:
    """log(cost) = mean + std · z; shared by every head so that heads compare on one scale."""

    mean: float
    std: float

    @classmethod
    def fit(cls, costs: np.ndarray) -> CostScale:
        logs = np.log(costs[~np.isnan(costs)] + 1e-12)
        return cls(float(logs.mean()), float(max(logs.std(), 1e-6)))

    @classmethod
    def from_moments(cls, count: float, total: float, total_sq: float) -> CostScale:
        """From Σ1, Σlog c, Σ(log c)² that clients may share (aggregates, no queries)."""
        mean = total / count
        return cls(mean, float(max(np.sqrt(max(total_sq / count - mean**2, 0.0)), 1e-6)))

    def z(self, costs: np.ndarray) -> np.ndarray:
        return (np.log(costs + 1e-12) - self.mean) / self.std

    def cost(self, z: np.ndarray) -> np.ndarray:
        return np.exp(z * self.std + self.mean)


@dataclass(frozen=True, slots=True)
class MlpPlan:
    width: int = 512
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    cost_weight: float = 1.0  # weight of the cost regression against the accuracy loss


class RouterNet(nn.Module):
    def __init__(self, dim: int, models: int, width: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dim, width),
            nn.LayerNorm(width),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
        )
        self.width = width
        self.heads = nn.ModuleList(nn.Linear(width, 2) for _ in range(models))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(accuracy logits, normalised log-costs), each (batch, models)."""
        h = self.trunk(x)
        out = torch.stack([head(h) for head in self.heads], dim=1)
        return out[..., 0], out[..., 1]

    def add_head(self) -> int:
        self.heads.append(nn.Linear(self.width, 2))
        return len(self.heads) - 1


@dataclass(frozen=True, slots=True)
class Targets:
    """Observed cells as tensors: scores, normalised log-costs, and the mask of what was observed."""

    x: torch.Tensor
    scores: torch.Tensor
    z: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(cls, x: np.ndarray, table: OutcomeTable, scale: CostScale) -> Targets:
        mask = table.observed
        return cls(
            x=torch.as_tensor(x, dtype=torch.float32),
            scores=torch.as_tensor(np.nan_to_num(table.scores), dtype=torch.float32),
            z=torch.as_tensor(scale.z(np.where(mask, table.costs, 1.0)), dtype=torch.float32),
            mask=torch.as_tensor(mask, dtype=torch.float32),
        )

    @property
    def cells(self) -> int:
        return int(self.mask.sum().item())


def masked_loss(net: RouterNet, batch: Targets, cost_weight: float) -> torch.Tensor:
    logits, z = net(batch.x)
    mask = batch.mask
    bce = nn.functional.binary_cross_entropy_with_logits(logits, batch.scores, reduction="none")
    mse = (z - batch.z) ** 2
    loss: torch.Tensor = ((bce + cost_weight * mse) * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


def train_local(
    net: RouterNet,
    data: Targets,
    plan: MlpPlan,
    epochs: int,
    seed: int,
    heads_only: list[int] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> float:
    """``epochs`` passes over the observed rows; returns the mean training loss of the last epoch.

    ``heads_only``: train just these heads, trunk and other heads frozen (adding a model later).
    ``after_epoch(epoch)`` runs after each epoch (1-based), e.g. to check validation loss.
    """
    rows = torch.nonzero(data.mask.sum(1) > 0).squeeze(1)
    if len(rows) == 0:
        return float("nan")
    if heads_only is None:
        parameters = list(net.parameters())
    else:
        parameters = [p for i in heads_only for p in net.heads[i].parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=plan.learning_rate, weight_decay=plan.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    last = float("nan")
    for epoch in range(1, epochs + 1):
        order = rows[torch.randperm(len(rows), generator=generator)]
        total, batches = 0.0, 0
        for start in range(0, len(order), plan.batch_size):
            index = order[start : start + plan.batch_size]
            batch = Targets(data.x[index], data.scores[index], data.z[index], data.mask[index])
            loss = masked_loss(net, batch, plan.cost_weight)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.item())
            batches += 1
        last = total / max(batches, 1)
        if after_epoch is not None:
            after_epoch(epoch)
            net.train()
    net.eval()
    return last


@torch.inference_mode()
def evaluate_loss(net: RouterNet, data: Targets, plan: MlpPlan) -> float:
    net.eval()
    return float(masked_loss(net, data, plan.cost_weight).item())


@torch.inference_mode()
def predict(net: RouterNet, x: np.ndarray, scale: CostScale) -> tuple[np.ndarray, np.ndarray]:
    """Expected accuracy A and cost C (USD), each (queries, models)."""
    net.eval()
    logits, z = net(torch.as_tensor(x, dtype=torch.float32))
    return torch.sigmoid(logits).numpy().astype(np.float64), scale.cost(z.numpy().astype(np.float64))


def state_arrays(net: RouterNet) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in net.state_dict().items()}


def load_arrays(net: RouterNet, arrays: dict[str, np.ndarray]) -> None:
    net.load_state_dict({name: torch.as_tensor(value) for name, value in arrays.items()})


def train_central(
    x: np.ndarray,
    train: OutcomeTable,
    x_validation: np.ndarray,
    validation: OutcomeTable,
    plan: MlpPlan,
    epochs: int,
    seed: int,
    scale: CostScale | None = None,
) -> tuple[RouterNet, CostScale, dict[str, Any]]:
    """One party with all the data: up to ``epochs`` epochs, keeping the epoch with the lowest validation
    loss. Returns the network, its cost scale and the history."""
    scale = scale or CostScale.fit(train.costs)
    torch.manual_seed(seed)
    net = RouterNet(x.shape[1], len(train.models), plan.width, plan.dropout)
    data, held = Targets.build(x, train, scale), Targets.build(x_validation, validation, scale)
    best: dict[str, Any] = {"epoch": 0, "loss": float("inf"), "state": state_arrays(net)}
    history: list[float] = []

    def check(epoch: int) -> None:
        loss = evaluate_loss(net, held, plan) if held.cells else float("nan")
        history.append(loss)
        if loss < best["loss"] or held.cells == 0:
            best.update(epoch=epoch, loss=loss, state=state_arrays(net))

    train_local(net, data, plan, epochs, seed, after_epoch=check)
    load_arrays(net, best["state"])
    return (
        net,
        scale,
        {"selected_epoch": best["epoch"], "validation_loss": best["loss"], "validation_loss_by_epoch": history},
    )
