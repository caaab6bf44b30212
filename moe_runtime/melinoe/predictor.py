"""The activation predictor: from a sequence's prefill routing, each layer's experts its decoding will use.

Per layer ℓ, a ridge regression from the prompt's expert frequencies x_ℓ (the share of the prompt's
(token, position) pairs routed to each expert) to the decode's, y_ℓ:

    ŷ_ℓ = W_ℓ · x_ℓ + b_ℓ        W_ℓ [E, E], b_ℓ [E], fitted on recorded routing (``RoutingTrace``)

and the prediction is the C experts with the largest ŷ_ℓ. It needs nothing but the routing the layer
computes anyway at prefill, so the expert cache applies it itself (the ``predicted`` policy) with no
embedder in the serving path; b_ℓ alone is the layer's overall favourites, W_ℓ what this prompt adds.

The cache fetches all C predicted experts at the prompt but pins only the best ``pin_share`` · C of them;
the other slots stay with the base policy, so experts the prediction missed can still be kept. Which share
pays depends on the model: where decoding uses few more experts than C, pinning all C wins; where it uses
many more, pinning all C keeps every other expert out for the whole sequence. The MELINOE job picks the
share on held-out routing (:func:`~thrifty.moe_runtime.simulate.choose_pin_share`) and stores it here.

Saved as ``predictor.safetensors`` (weight [L, E, E], bias [L, E]; metadata: experts, top_k, layers,
ridge, pin_share, and the decoder-layer number of each MoE layer, so a server that names its layers
``model.layers.<n>.…`` finds each one's share even when dense layers sit between them) inside an
artifact folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from thrifty.moe_runtime.traces import TraceSequence

FILE = "predictor.safetensors"
KIND = "thrifty.melinoe.predictor"


def frequencies(ids: torch.Tensor, experts: int) -> torch.Tensor:
    """[tokens, layers, k] routing → [layers, E]: each layer's share of (token, position) pairs per expert."""
    layers = ids.shape[1]
    counts = torch.zeros(layers, experts, dtype=torch.float64)
    flat = ids.to(torch.long).permute(1, 0, 2).reshape(layers, -1)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
    return counts / counts.sum(-1, keepdim=True).clamp(min=1.0)


@dataclass(frozen=True, slots=True)
class PredictionQuality:
    precision: float  # of the predicted experts, the share decoding used
    recall: float  # of the (sequence, layer, expert) uses in decoding, the share a predicted expert served
    set_recall: float  # of the distinct experts decoding used, the share predicted


class LayerPredictor:
    """One layer's share of the predictor: what the expert cache of that layer applies at a prefill.

    Held in NumPy: the choice is made on the host from counts the cache already read, so it touches no
    device tensor and adds no synchronisation to the pass.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, pin_share: float = 1.0) -> None:
        if weight.dim() != 2 or weight.shape != (bias.shape[0], bias.shape[0]):
            raise ValueError(f"a layer predictor needs weight [E, E] and bias [E], got {tuple(weight.shape)}")
        self.weight = weight.detach().to("cpu", torch.float64).numpy()
        self.bias = bias.detach().to("cpu", torch.float64).numpy()
        self.pin_share = check_pin_share(pin_share)

    @property
    def experts(self) -> int:
        return int(self.bias.shape[0])

    def choose(self, prompt_counts: Sequence[int], slots: int) -> list[int]:
        """The ``slots`` experts to hold for a sequence whose prompt routed ``prompt_counts[e]`` pairs to e."""
        counts = np.asarray(list(prompt_counts)[: self.experts], dtype=np.float64)
        scores = self.weight @ (counts / max(counts.sum(), 1.0)) + self.bias
        order = sorted(range(self.experts), key=lambda e: (-scores[e], e))
        return order[:slots]


@dataclass(slots=True)
class ExpertPredictor:
    weight: torch.Tensor  # [L, E, E]
    bias: torch.Tensor  # [L, E]
    top_k: int
    ridge: float = 1e-2
    layer_ids: tuple[int, ...] = ()  # the decoder-layer number of each MoE layer, when known
    pin_share: float = 1.0  # of the C predicted experts, the share the cache pins (the best first)

    def __post_init__(self) -> None:
        check_pin_share(self.pin_share)
        if self.layer_ids and len(self.layer_ids) != self.weight.shape[0]:
            raise ValueError(f"{len(self.layer_ids)} layer ids for a predictor of {self.weight.shape[0]} layers")

    @property
    def layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def experts(self) -> int:
        return int(self.weight.shape[1])

    def layer(self, index: int) -> LayerPredictor:
        return LayerPredictor(self.weight[index], self.bias[index], self.pin_share)

    def layer_named(self, name: str, index: int) -> LayerPredictor:
        """The share of the MoE layer a server calls ``name`` (``…layers.<n>.…``), the ``index``-th it built:
        found by its decoder-layer number where the predictor records them, else by position."""
        if not self.layer_ids:
            if not 0 <= index < self.layers:
                raise ValueError(f"the predictor covers {self.layers} MoE layers; {name} is number {index + 1}")
            return self.layer(index)
        found = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if found is None or int(found.group(1)) not in self.layer_ids:
            raise ValueError(f"the predictor covers decoder layers {list(self.layer_ids)}, not {name}")
        return self.layer(self.layer_ids.index(int(found.group(1))))

    def layer_scores(self, layer: int, prompt_frequency: torch.Tensor) -> torch.Tensor:
        """ŷ for one layer from that layer's prompt frequencies [E]."""
        return self.weight[layer] @ prompt_frequency.to(self.weight.dtype) + self.bias[layer]

    def predict(self, prefill_ids: torch.Tensor, slots: int) -> list[list[int]]:
        """Each layer's ``slots`` most likely experts, best first, from the prompt's routing [tokens, L, k]."""
        x = frequencies(prefill_ids, self.experts)
        return [rank(self.layer_scores(layer, x[layer]), slots) for layer in range(self.layers)]

    @classmethod
    def fit(
        cls,
        sequences: Sequence[TraceSequence],
        *,
        experts: int,
        top_k: int,
        ridge: float = 1e-2,
        layer_ids: Sequence[int] = (),
    ) -> ExpertPredictor:
        """Least squares with an L2 penalty ``ridge`` on W (not on b), per layer, over ``sequences``."""
        usable = [s for s in sequences if s.ids.shape[0] > s.prefill]
        if not usable:
            raise ValueError("the predictor needs sequences with decoded tokens after their prompt")
        layers = usable[0].ids.shape[1]
        x = torch.stack([frequencies(s.ids[: s.prefill], experts) for s in usable])  # [N, L, E]
        y = torch.stack([frequencies(s.ids[s.prefill :], experts) for s in usable])
        weight = torch.zeros(layers, experts, experts, dtype=torch.float64)
        bias = torch.zeros(layers, experts, dtype=torch.float64)
        for layer in range(layers):
            xl, yl = x[:, layer], y[:, layer]
            x_mean, y_mean = xl.mean(0), yl.mean(0)
            xc, yc = xl - x_mean, yl - y_mean
            gram = xc.T @ xc + ridge * len(usable) * torch.eye(experts, dtype=torch.float64)
            w = torch.linalg.solve(gram, xc.T @ yc).T  # [E_out, E_in]
            weight[layer] = w
            bias[layer] = y_mean - w @ x_mean
        return cls(weight.float(), bias.float(), top_k, ridge, tuple(layer_ids))

    def quality(self, sequences: Sequence[TraceSequence], slots: int) -> PredictionQuality:
        """How well the predicted ``slots`` experts per layer match what decoding then used."""
        hits = predicted = used_pairs = covered_pairs = used_sets = covered_sets = 0
        for seq in sequences:
            if seq.ids.shape[0] <= seq.prefill:
                continue
            guesses = self.predict(seq.ids[: seq.prefill], slots)
            decode = seq.ids[seq.prefill :].to(torch.long)
            for layer, guess in enumerate(guesses):
                chosen = set(guess)
                uses = decode[:, layer].reshape(-1).tolist()
                distinct = set(uses)
                hits += len(chosen & distinct)
                predicted += len(chosen)
                used_pairs += len(uses)
                covered_pairs += sum(e in chosen for e in uses)
                used_sets += len(distinct)
                covered_sets += len(chosen & distinct)
        if not predicted:
            raise ValueError("no sequence with decoded tokens to measure the predictor on")
        return PredictionQuality(hits / predicted, covered_pairs / used_pairs, covered_sets / used_sets)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FILE
        tmp = path.with_name(path.name + ".partial")
        save_file(
            {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
            str(tmp),
            metadata={
                "kind": KIND,
                "version": "1",
                "experts": str(self.experts),
                "layers": str(self.layers),
                "top_k": str(self.top_k),
                "ridge": repr(self.ridge),
                "pin_share": repr(self.pin_share),
                "layer_ids": json.dumps(list(self.layer_ids)),
            },
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder_or_file: Path) -> ExpertPredictor:
        path = folder_or_file / FILE if folder_or_file.is_dir() else folder_or_file
        if not path.is_file():
            raise ValueError(f"no expert predictor at {path}")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("kind") != KIND:
                raise ValueError(f"{path} is not an expert predictor (kind {meta.get('kind')!r})")
            weight, bias = handle.get_tensor("weight"), handle.get_tensor("bias")
        layers, experts = int(meta["layers"]), int(meta["experts"])
        if weight.shape != (layers, experts, experts) or bias.shape != (layers, experts):
            raise ValueError(
                f"{path}: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not match its metadata"
            )
        layer_ids = tuple(json.loads(meta.get("layer_ids", "[]")))
        pin_share = float(meta.get("pin_share", "1.0"))  # predictors written before the share pinned all C
        return cls(weight.float(), bias.float(), int(meta["top_k"]), float(meta["ridge"]), layer_ids, pin_share)


def check_pin_share(share: float) -> float:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"pin_share is the share of the C predicted experts to pin: in [0, 1], got {share}")
    return float(share)


def pinned_count(share: float, slots: int) -> int:
    """How many of ``slots`` predicted experts a share pins (half-way rounds up, so a share > 0 pins ≥ 1
    only where it is at least 1/(2C))."""
    return min(slots, int(share * slots + 0.5))


def rank(scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` best-scoring experts, best first; ties go to the lower id."""
    order = sorted(range(scores.shape[0]), key=lambda e: (-float(scores[e]), e))
    return order[:count]
