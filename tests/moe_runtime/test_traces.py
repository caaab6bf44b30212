from __future__ import annotations

from pathlib import Path

import pytest
import torch

from thrifty.moe_runtime import CacheConfig, ExpertCache
from thrifty.moe_runtime.traces import RoutingTrace, TraceSequence, synthetic


def _hit_rate(trace: RoutingTrace, slots: int) -> float:
    weights = {"gate_up": torch.zeros(trace.experts, 2, 1), "down": torch.zeros(trace.experts, 1, 1)}
    caches = [ExpertCache(weights, CacheConfig(slots=slots, policy="lru")) for _ in range(trace.layers)]
    for seq in trace.sequences:
        for step in seq.passes():
            for layer, cache in enumerate(caches):
                cache.prepare(step[:, layer].flatten().tolist())
    hits = sum(c.stats.hits for c in caches)
    return hits / sum(c.stats.hits + c.stats.misses for c in caches)


def test_a_trace_survives_a_round_trip(tmp_path: Path) -> None:
    trace = synthetic(
        experts=8, top_k=2, layers=3, sequences=3, prompt_tokens=5, decode_tokens=7, locality=0.8, working_set=4
    )
    path = tmp_path / "t.trace.safetensors"
    trace.save(path)
    loaded = RoutingTrace.load(path)
    assert (loaded.experts, loaded.top_k, loaded.layers) == (8, 2, 3)
    assert loaded.source == trace.source and loaded.decode_tokens() == 3 * 7
    for a, b in zip(loaded.sequences, trace.sequences, strict=True):
        assert torch.equal(a.ids, b.ids) and a.prefill == b.prefill
    passes = loaded.sequences[0].passes()
    assert [p.shape[0] for p in passes] == [5] + [1] * 7
    assert all(len(set(token.tolist())) == 2 for token in loaded.sequences[0].ids.reshape(-1, 2))


def test_locality_is_what_caches_feed_on() -> None:
    common = {"experts": 16, "top_k": 2, "layers": 2, "sequences": 4, "prompt_tokens": 4, "decode_tokens": 60}
    uniform = synthetic(**common, locality=0.0, working_set=4)  # type: ignore[arg-type]
    local = synthetic(**common, locality=0.95, working_set=4)  # type: ignore[arg-type]
    assert _hit_rate(local, slots=4) > _hit_rate(uniform, slots=4) + 0.3


def test_malformed_traces_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expert ids must be in \[0, 4\)"):
        RoutingTrace(4, 1, 1, [TraceSequence(torch.tensor([[[4]]], dtype=torch.int16), prefill=1)])
    with pytest.raises(ValueError, match="must be \\[tokens, 2, 1\\]"):
        RoutingTrace(4, 1, 2, [TraceSequence(torch.zeros(3, 1, 1, dtype=torch.int16), prefill=1)])
    (tmp_path / "x").write_bytes(b"not a trace")
    with pytest.raises(Exception):  # noqa: B017, PT011 - safetensors' own error for a file that is not one
        RoutingTrace.load(tmp_path / "x")
