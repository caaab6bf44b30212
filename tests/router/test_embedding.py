"""Query embedders: MiniLM as sentence-transformers computes it, model2vec static vectors, identities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from thrifty.router.embedding import (
    EmbedderMismatch,
    EmbeddingCache,
    MiniLmEmbedder,
    MiniLmInt8Embedder,
    StaticEmbedder,
    cached_encode,
    load_embedder,
    minilm_path,
)

QUERIES = [
    "Write a python function to reverse a linked list.",
    "Implement a Python function that reverses a singly linked list.",
    "Which country won the 1998 football World Cup?",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLmEmbedder:
    return MiniLmEmbedder()


def test_minilm_matches_sentence_transformers(minilm: MiniLmEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(QUERIES, normalize_embeddings=True)
    ours = minilm.encode(QUERIES)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    assert np.allclose(ours, reference, atol=1e-5)
    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.8 > 0.2 > similarity[0, 2]


def test_identity_names_kind_dimension_and_weights(minilm: MiniLmEmbedder, tmp_path: Path) -> None:
    identity = minilm.identity
    assert identity["kind"] == "minilm" and identity["dim"] == 384 and len(identity["sha256"]) == 64
    minilm.check(dict(identity))
    with pytest.raises(EmbedderMismatch, match="trained with embedder"):
        minilm.check(identity | {"sha256": "0" * 64})


def test_int8_minilm_is_its_own_embedder(minilm: MiniLmEmbedder) -> None:
    int8 = load_embedder("minilm-int8")
    assert isinstance(int8, MiniLmInt8Embedder)
    vectors, full = int8.encode(QUERIES), minilm.encode(QUERIES)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Close to full precision but not the same vectors: a router trained on one must not serve the other.
    agreement = (vectors * full).sum(1)
    assert (agreement > 0.8).all() and not np.allclose(vectors, full, atol=1e-3)
    assert (vectors @ vectors.T)[0, 1] > 0.8 > 0.2 > (vectors @ vectors.T)[0, 2]
    assert np.array_equal(int8.encode(QUERIES), vectors)  # deterministic
    assert int8.identity["kind"] == "minilm-int8" and int8.identity["sha256"] == minilm.identity["sha256"]
    with pytest.raises(EmbedderMismatch):
        int8.check(minilm.identity)
    with pytest.raises(ValueError, match="minilm-int8"):
        load_embedder("bert")


def _tiny_static(folder: Path) -> StaticEmbedder:
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 16)).astype(np.float32)
    StaticModel(vectors, tokenizer).save_pretrained(str(folder))
    return StaticEmbedder(folder)


def test_the_cache_is_keyed_by_text_shared_across_runs_and_merges_its_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = _tiny_static(tmp_path / "static")
    encoded: list[str] = []
    original = static._encode

    def counting(texts: Sequence[str]) -> np.ndarray:
        encoded.extend(texts)
        return original(texts)

    monkeypatch.setattr(static, "_encode", counting)
    monkeypatch.setattr("thrifty.router.embedding.MAX_SHARDS", 2)
    first = EmbeddingCache(static, tmp_path / "cache").encode(QUERIES)
    assert encoded == QUERIES
    again = EmbeddingCache(static, tmp_path / "cache").encode([QUERIES[1], "a new query", QUERIES[1]])
    assert encoded == [*QUERIES, "a new query"]  # only the text no run had encoded, once
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[0], again[2])
    EmbeddingCache(static, tmp_path / "cache").encode(["and another"])  # a third shard: merged into one
    (shard,) = list(EmbeddingCache(static, tmp_path / "cache").folder.glob("shard-*"))
    assert len(load_file(str(shard))["keys"]) == 5
    assert not list(EmbeddingCache(static, tmp_path / "cache").folder.glob(".*partial"))
    monkeypatch.setenv("THRIFTY_EMBEDDING_CACHE", str(tmp_path / "elsewhere"))
    assert EmbeddingCache(static).folder.parent == tmp_path / "elsewhere"


def test_static_embedder_and_the_encoding_cache(tmp_path: Path) -> None:
    static = _tiny_static(tmp_path / "static")
    vectors = static.encode(QUERIES)
    assert vectors.shape == (3, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert static.identity["kind"] == "static" and static.identity["dim"] == 16
    cached = cached_encode(static, QUERIES, tmp_path / "cache")
    (folder,) = list((tmp_path / "cache").iterdir())  # one folder per embedder identity
    assert folder.name.startswith("static-16-") and np.array_equal(cached, vectors)
    (shard,) = list(folder.glob("shard-*.safetensors"))
    keys = load_file(str(shard))["keys"]
    save_file({"keys": keys, "vectors": np.zeros_like(vectors)}, str(shard))  # later calls read the shard
    assert not cached_encode(static, QUERIES, tmp_path / "cache").any()
    assert json.loads((tmp_path / "static" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no static embedder"):
        StaticEmbedder(tmp_path / "nowhere")
