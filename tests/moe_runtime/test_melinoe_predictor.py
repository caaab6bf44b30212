"""The activation predictor: fitted on recorded-style routing, it finds the experts decoding will use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor, frequencies, pinned_count
from thrifty.moe_runtime.traces import TraceSequence, synthetic

E, K, C = 16, 2, 4


def _trace(seed: int, sequences: int = 60) -> list[TraceSequence]:
    # each sequence lives in its own working set of C experts per layer: the prompt shows which
    trace = synthetic(
        experts=E, top_k=K, layers=2, sequences=sequences, prompt_tokens=12, decode_tokens=24,
        locality=0.9, working_set=C, drift=0.0, seed=seed,
    )  # fmt: skip
    return trace.sequences


def test_frequencies_are_shares_of_pairs_per_layer() -> None:
    ids = torch.tensor([[[0, 1], [2, 3]], [[0, 2], [2, 2]]])
    f = frequencies(ids, 4)
    assert torch.allclose(f, torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.75, 0.25]], dtype=torch.float64))


def test_fitted_predictor_finds_the_sequences_experts_on_held_out_sequences() -> None:
    predictor = ExpertPredictor.fit(_trace(seed=1), experts=E, top_k=K)
    quality = predictor.quality(_trace(seed=2), slots=C)
    # the working set covers 90 % of decode uses (and chance, C/E, a quarter)
    assert quality.recall > 0.8 and quality.precision > 0.9, quality
    # the bias alone (the layer's favourites over all sequences) knows nothing of this prompt
    prior = ExpertPredictor(torch.zeros_like(predictor.weight), predictor.bias, top_k=K)
    assert prior.quality(_trace(seed=2), slots=C).recall < 0.5


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    predictor = ExpertPredictor.fit(_trace(seed=3, sequences=20), experts=E, top_k=K, ridge=0.05)
    predictor.save(tmp_path)
    loaded = ExpertPredictor.load(tmp_path)
    assert torch.equal(loaded.weight, predictor.weight) and torch.equal(loaded.bias, predictor.bias)
    assert (loaded.top_k, loaded.ridge, loaded.layers, loaded.experts) == (K, 0.05, 2, E)
    assert loaded.pin_share == 1.0 and loaded.layer(0).pin_share == 1.0  # pins all C unless told otherwise
    replace(predictor, pin_share=0.25).save(tmp_path)
    assert (
        ExpertPredictor.load(tmp_path).pin_share == 0.25 and ExpertPredictor.load(tmp_path).layer(1).pin_share == 0.25
    )
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 2"):
        replace(predictor, pin_share=2.0)
    assert [pinned_count(share, 8) for share in (0.0, 0.0625, 0.125, 0.5, 1.0)] == [0, 1, 1, 4, 8]
    assert pinned_count(0.5, 3) == 2 and pinned_count(0.1, 3) == 0
    prompt = _trace(seed=4, sequences=1)[0]
    assert loaded.predict(prompt.ids[: prompt.prefill], C) == predictor.predict(prompt.ids[: prompt.prefill], C)
    assert (
        loaded.layer(1).choose(frequencies(prompt.ids[: prompt.prefill], E)[1].tolist(), C)
        == loaded.predict(prompt.ids[: prompt.prefill], C)[1]
    )
    with pytest.raises(ValueError, match="no expert predictor"):
        ExpertPredictor.load(tmp_path / "missing")
    save_file({"weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"kind": "something else"})
    with pytest.raises(ValueError, match="is not an expert predictor"):
        ExpertPredictor.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="decoded tokens"):
        ExpertPredictor.fit([TraceSequence(torch.zeros(3, 2, K, dtype=torch.int16), prefill=3)], experts=E, top_k=K)
