"""Small real artifacts for router tests: a static embedder with random vectors over MiniLM's tokenizer
(model2vec's own format, made in milliseconds), and router artifacts trained or written from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thrifty.router.artifact import RouterArtifact
from thrifty.router.embedding import StaticEmbedder, minilm_path

MODELS = ("big", "small")
PRESETS = {"best": 0.0, "balanced": 100.0, "cheap": 10000.0}  # λ that separate the two topics below
MATH = "solve the integral of x squared"
POEM = "write a short poem about the sea"


def tiny_static_embedder(folder: Path, dim: int = 32, seed: int = 0) -> StaticEmbedder:
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    vectors = np.random.default_rng(seed).normal(size=(tokenizer.get_vocab_size(), dim)).astype(np.float32)
    StaticModel(vectors, tokenizer).save_pretrained(str(folder))
    return StaticEmbedder(folder)


def two_topic_artifact(out: Path, embedder: StaticEmbedder, embedder_folder: Path) -> RouterArtifact:
    """K-means with one centre per topic: on maths only the big model is right; on poems both are,
    and the small one is ten times cheaper."""
    centres = embedder.encode([MATH, POEM])
    artifact = RouterArtifact(
        family="kmeans",
        models=MODELS,
        embedder=embedder.identity,
        arrays={
            "centres": centres,
            "accuracy": np.array([[0.9, 0.2], [0.85, 0.8]], dtype=np.float32),
            "cost": np.array([[1e-3, 1e-4], [1e-3, 1e-4]], dtype=np.float32),
            "count": np.full((2, 2), 10.0, dtype=np.float32),
        },
        settings={"clusters": 2, "prior_weight": 2.0},
    )
    artifact.save(out, embedder_folder)
    return artifact


def two_topic_folder(tmp_path: Path) -> Path:
    """:func:`two_topic_artifact` saved under ``tmp_path/router`` with a fresh embedder."""
    embedder = tiny_static_embedder(tmp_path / "emb")
    two_topic_artifact(tmp_path / "router", embedder, tmp_path / "emb")
    return tmp_path / "router"
