"""Routing traces: which experts each token was routed to, per layer, recorded or synthetic.

A trace holds sequences; each is ``ids`` [tokens, layers, k] whose first ``prefill`` tokens were one
forward pass (the prompt) and the rest one pass per generated token. Saved as one safetensors file
(sequences concatenated, with their lengths) whose metadata carries the shape and where it came from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass(slots=True)
class TraceSequence:
    ids: torch.Tensor  # [tokens, layers, k], int16
    prefill: int

    def passes(self) -> list[torch.Tensor]:
        """Forward passes in order: the prompt's tokens together, then one generated token at a time."""
        return [self.ids[: self.prefill], *(self.ids[t : t + 1] for t in range(self.prefill, self.ids.shape[0]))]


@dataclass(slots=True)
class RoutingTrace:
    experts: int
    top_k: int
    layers: int
    sequences: list[TraceSequence]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for seq in self.sequences:
            if seq.ids.dim() != 3 or seq.ids.shape[1:] != (self.layers, self.top_k):
                raise ValueError(f"trace sequences must be [tokens, {self.layers}, {self.top_k}]")
            if not 1 <= seq.prefill <= seq.ids.shape[0]:
                raise ValueError("a trace sequence's prefill must cover 1 … tokens")
            if int(seq.ids.min()) < 0 or int(seq.ids.max()) >= self.experts:
                raise ValueError(f"trace expert ids must be in [0, {self.experts})")

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".partial")
        save_file(
            {
                "ids": torch.cat([s.ids for s in self.sequences]).to(torch.int16).contiguous(),
                "lengths": torch.tensor([s.ids.shape[0] for s in self.sequences], dtype=torch.int64),
                "prefill": torch.tensor([s.prefill for s in self.sequences], dtype=torch.int64),
            },
            str(tmp),
            metadata={
                "kind": "thrifty.routing_trace",
                "version": "1",
                "experts": str(self.experts),
                "top_k": str(self.top_k),
                "layers": str(self.layers),
                "source": json.dumps(self.source, sort_keys=True),
            },
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RoutingTrace:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("kind") != "thrifty.routing_trace":
            raise ValueError(f"{path} is not a routing trace")
        tensors = load_file(str(path))
        chunks = torch.split(tensors["ids"], tensors["lengths"].tolist())
        sequences = [TraceSequence(c, int(p)) for c, p in zip(chunks, tensors["prefill"].tolist(), strict=True)]
        return cls(int(meta["experts"]), int(meta["top_k"]), int(meta["layers"]), sequences, json.loads(meta["source"]))

    def decode_tokens(self) -> int:
        return sum(s.ids.shape[0] - s.prefill for s in self.sequences)


def from_recording(passes: Sequence[torch.Tensor]) -> TraceSequence:
    """One generated sequence from ``CachedModel.record``: the first pass is the prompt."""
    if not passes or any(p.shape[0] != 1 for p in passes[1:]):
        raise ValueError("a recorded sequence is one prompt pass followed by one-token passes (batch size 1)")
    return TraceSequence(torch.cat(list(passes)).to(torch.int16), prefill=passes[0].shape[0])


def synthetic(
    *,
    experts: int,
    top_k: int,
    layers: int,
    sequences: int,
    prompt_tokens: int,
    decode_tokens: int,
    locality: float,
    working_set: int,
    drift: float = 0.02,
    seed: int = 0,
) -> RoutingTrace:
    """Tokens that pick each of their k experts from the sequence's per-layer working set with probability
    ``locality`` (else uniformly from all E); each token, with probability ``drift``, one member of a
    working set is replaced. ``locality`` 0 is uniform routing; near 1, a sequence lives in its set."""
    if not top_k <= working_set <= experts:
        raise ValueError("need top_k ≤ working_set ≤ experts")
    if not 0.0 <= locality <= 1.0:
        raise ValueError("locality must be in [0, 1]")
    rng = random.Random(seed)
    out: list[TraceSequence] = []
    for _ in range(sequences):
        sets = [rng.sample(range(experts), working_set) for _ in range(layers)]
        rows = []
        for _ in range(prompt_tokens + decode_tokens):
            token = []
            for layer in range(layers):
                if rng.random() < drift:
                    sets[layer][rng.randrange(working_set)] = rng.choice(
                        [e for e in range(experts) if e not in sets[layer]] or sets[layer]
                    )
                chosen: list[int] = []
                while len(chosen) < top_k:
                    pool = sets[layer] if rng.random() < locality else range(experts)
                    pick = rng.choice(list(pool))
                    if pick not in chosen:
                        chosen.append(pick)
                token.append(chosen)
            rows.append(token)
        out.append(TraceSequence(torch.tensor(rows, dtype=torch.int16), prefill=prompt_tokens))
    source = {
        "kind": "synthetic",
        "locality": locality,
        "working_set": working_set,
        "drift": drift,
        "seed": seed,
    }
    return RoutingTrace(experts, top_k, layers, out, source)
