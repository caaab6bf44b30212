"""The fast policy's trainable twin: the same network in torch, features cached per turn text.

The last layer starts at zero, so the initial policy (also the reference the KL term pulls towards)
is uniform over the levels that fit. Features are standardised with the mean and spread of the
contexts the initial policy meets on the training problems (:meth:`FastLearner.fit_scaling`); the
exported :class:`~thrifty.budgeter.tab.policy.FastPolicy` carries them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from thrifty.budgeter.tab.features import Context, feature_names, state_scalars, text_scalars
from thrifty.budgeter.tab.policy import FastPolicy, masked_log_softmax

if TYPE_CHECKING:
    import torch

Embed = Callable[[list[str]], np.ndarray]


class FastLearner:
    scales_features = True
    micro_batch: int | None = None  # the whole batch at once

    def __init__(
        self,
        ladder: Sequence[int],
        all_subq: bool,
        embed: Embed | None = None,
        embedding_dim: int = 0,
        hidden: int = 64,
        seed: int = 0,
    ) -> None:
        import torch

        self.ladder = tuple(ladder)
        self.all_subq = all_subq
        self.embed = embed
        self.names = feature_names(all_subq, embedding_dim if embed is not None else 0)
        self.hidden = hidden
        torch.manual_seed(seed)
        width = len(self.names)
        self.network = torch.nn.Sequential(
            torch.nn.Linear(width, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, len(self.ladder)),
        )
        last = self.network[-1]
        assert isinstance(last, torch.nn.Linear)
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        self.reference = copy.deepcopy(self.network).requires_grad_(False)
        self.mean = np.zeros(width, dtype=np.float32)
        self.scale = np.ones(width, dtype=np.float32)
        self._text: dict[Any, list[float]] = {}
        self._vectors: dict[str, np.ndarray] = {}

    # --- features --------------------------------------------------------------------------------------

    def features(self, contexts: Sequence[Context]) -> np.ndarray:
        rows = []
        texts = [c.sub_question or " " for c in contexts]
        if self.embed is not None:
            missing = sorted({t for t in texts if t not in self._vectors})
            if missing:
                for text, vector in zip(missing, np.asarray(self.embed(missing), dtype=np.float32), strict=True):
                    self._vectors[text] = vector
        for context, text in zip(contexts, texts, strict=True):
            key = (context.turn, context.plan, tuple((m.get("role"), str(m.get("content"))) for m in context.messages))
            cached = self._text.get(key)
            if cached is None:
                cached = self._text[key] = text_scalars(context, self.all_subq)
            row = state_scalars(context) + cached
            rows.append(np.concatenate([row, self._vectors[text]]) if self.embed is not None else row)
        return np.asarray(rows, dtype=np.float32).reshape(len(contexts), len(self.names))

    def fit_scaling(self, contexts: Sequence[Context]) -> None:
        x = self.features(contexts)
        self.mean = x.mean(axis=0).astype(np.float32)
        self.scale = np.maximum(x.std(axis=0), 1e-3).astype(np.float32)

    # --- the Learner protocol --------------------------------------------------------------------------

    def parameters(self) -> Any:
        return self.network.parameters()

    def _logits(self, network: torch.nn.Module, contexts: Sequence[Context]) -> torch.Tensor:
        import torch

        x = (self.features(contexts) - self.mean) / self.scale
        return network(torch.from_numpy(x))  # type: ignore[no-any-return]

    def probabilities(self, contexts: Sequence[Context], masks: np.ndarray, temperature: float) -> np.ndarray:
        import torch

        with torch.no_grad():
            logp = masked_log_softmax(self._logits(self.network, contexts), masks, temperature)
        return np.where(masks, np.exp(logp.numpy()), 0.0)

    def log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        return self._log_probs(self.network, contexts, masks, actions, temperature)

    def reference_log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self._log_probs(self.reference, contexts, masks, actions, temperature)

    def _log_probs(
        self, network: Any, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        import torch

        index = torch.from_numpy(np.asarray(actions, dtype=np.int64))[:, None]
        logp: torch.Tensor = masked_log_softmax(self._logits(network, contexts), masks, temperature)
        return logp.gather(1, index)[:, 0]

    # --- export ----------------------------------------------------------------------------------------

    def export(self) -> FastPolicy:
        import torch

        layers = []
        for module in self.network:
            if isinstance(module, torch.nn.Linear):
                weight = module.weight.detach().numpy().T.astype(np.float32).copy()
                layers.append((weight, module.bias.detach().numpy().astype(np.float32).copy()))
        return FastPolicy(self.ladder, self.names, self.mean.copy(), self.scale.copy(), tuple(layers))

    def state(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs to continue: the network, the reference and the scaling."""
        import torch

        tensors = {f"network.{k}": v.detach().clone() for k, v in self.network.state_dict().items()}
        tensors |= {f"reference.{k}": v.detach().clone() for k, v in self.reference.state_dict().items()}
        tensors["mean"], tensors["scale"] = torch.from_numpy(self.mean.copy()), torch.from_numpy(self.scale.copy())
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("network.")})
        self.reference.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("reference.")})
        self.mean, self.scale = tensors["mean"].numpy().copy(), tensors["scale"].numpy().copy()
