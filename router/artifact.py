"""Router artifacts: what ``thrifty train router`` writes and the gateway loads.

A folder::

    manifest.json          kind, version, family, models, embedder identity, inputs, training, metrics,
                           and the SHA-256 of every other file; written last
    weights.safetensors    the MLP's parameters, the K-means centres and per-(cluster, model) means, or
                           the ensemble's members (``mlp<i>/``, ``kmeans<j>/``, ``tasks0/``, ``constant/``)
    embedder/              only with --copy-embedder: the static embedder's files; otherwise the manifest
                           names the embedder by identity (kind, dimension, SHA-256) and the folder it was
                           read from, and the gateway resolves it there or in its ``embedder_dir``
                           (MiniLM comes from its package)

Prediction here is NumPy only, so the gateway needs neither torch nor Flower: the MLP's forward pass is a
few matrix products (the network uses the tanh form of GELU, which NumPy computes exactly as torch does).
"""

from __future__ import annotations

import math
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from thrifty.router.embedding import EMBEDDER_KINDS, Embedder, StaticEmbedder, load_embedder
from thrifty.router.ensemble import COST_MODELS, SHRINK_MAX, corrected, line_cost
from thrifty.server.kit.artifacts import ArtifactError, ArtifactWriter, Manifest, load_verified
from thrifty.server.kit.artifacts import read_manifest as read_checked_manifest

KIND = "thrifty.router"
VERSION = 1
WEIGHTS = "weights.safetensors"
EMBEDDER_DIR = "embedder"
Family = Literal["mlp", "kmeans", "ensemble"]
LAYER_NORM_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)


class EmbedderIdentity(BaseModel):
    """Which embedder a router was trained with (its kind, dimension and weights' hash, at least)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    dim: int = Field(..., ge=1)


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class RouterManifest(Manifest):
    """The schema of a router artifact's ``manifest.json``: the one place it is checked."""

    family: Family
    models: list[str] = Field(..., min_length=1)
    embedder: EmbedderIdentity
    settings: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models) or not all(models):
            raise ValueError("model names must be distinct and non-empty")
        return models

    @model_validator(mode="after")
    def _complete(self) -> RouterManifest:
        if WEIGHTS not in self.files:
            raise ValueError(f"files must list {WEIGHTS}")
        if self.family in ("mlp", "ensemble"):
            mean, std = self.settings.get("cost_mean"), self.settings.get("cost_std")
            if not (_finite(mean) and _finite(std) and std > 0):
                raise ValueError("an MLP router's settings need a finite cost_mean and a cost_std > 0")
        if self.family == "ensemble":
            shrink = self.settings.get("shrink")
            if not (_finite(shrink) and 0 <= shrink <= SHRINK_MAX):
                raise ValueError(f"an ensemble router's settings need a shrink in [0, {SHRINK_MAX:g}]")
            if self.settings.get("cost_model", "components") not in COST_MODELS:
                raise ValueError(f"an ensemble router's cost_model is one of {', '.join(COST_MODELS)}")
        return self


class Predictor(ABC):
    """Expected accuracy and cost (USD) of every model of the artifact, for a batch of embeddings and the
    queries' lengths (:func:`thrifty.router.ensemble.query_lengths`; only an ensemble whose costs come from
    its cost line reads them, and then needs them)."""

    @abstractmethod
    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class MlpPredictor(Predictor):
    """The MLP's forward pass; with several networks of one shape (the ensemble's members), the mean of
    their predictions, computed as if they were one wide network: one product for every first layer, a
    batched one for the second layers and the heads. A decision is then a handful of NumPy calls however
    many members there are."""

    def __init__(self, members: list[dict[str, np.ndarray]], cost_mean: float, cost_std: float) -> None:
        if not members:
            raise ArtifactError("an MLP router needs at least one network")
        try:
            nets = [_mlp_arrays(a) for a in members]
            self.first = np.concatenate([n["first"] for n in nets], axis=1)  # (dim, K·width)
            self.first_bias = np.concatenate([n["first_bias"] for n in nets])
            stacked = {key: np.stack([n[key] for n in nets]) for key in nets[0] if not key.startswith("first")}
        except ValueError as exc:  # members of different shapes
            raise ArtifactError(f"the MLP networks do not share one shape ({exc})") from None
        self.second, self.heads = stacked["second"], stacked["heads"]  # (K, w, w), (K, w, 2M)
        # Biases and LayerNorm parameters broadcast over (K, batch, width).
        self.second_bias, self.heads_bias = stacked["second_bias"][:, None], stacked["heads_bias"][:, None]
        self.norms = [(stacked[f"gain{i}"][:, None], stacked[f"shift{i}"][:, None]) for i in (0, 1)]
        self.cost_mean, self.cost_std = cost_mean, cost_std

    @staticmethod
    def _norm_gelu(h: np.ndarray, gain: np.ndarray, shift: np.ndarray) -> np.ndarray:
        centred = h - h.mean(-1, keepdims=True)
        h = centred / np.sqrt((centred * centred).mean(-1, keepdims=True) + LAYER_NORM_EPS) * gain + shift
        gelu: np.ndarray = 0.5 * h * (1.0 + np.tanh(GELU_SCALE * (h + 0.044715 * h * h * h)))  # torch's tanh form
        return gelu

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        batch, members = len(x), len(self.second)
        h = np.asarray(x, dtype=np.float32) @ self.first + self.first_bias
        h = h.reshape(batch, members, -1).transpose(1, 0, 2)  # (K, batch, width)
        h = self._norm_gelu(h, *self.norms[0])
        h = self._norm_gelu(np.matmul(h, self.second) + self.second_bias, *self.norms[1])
        out = (np.matmul(h, self.heads) + self.heads_bias).reshape(members, batch, -1, 2).astype(np.float64)
        accuracy = (1.0 / (1.0 + np.exp(-out[..., 0]))).mean(0)
        return accuracy, np.exp(out[..., 1] * self.cost_std + self.cost_mean).mean(0)


def _mlp_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One RouterNet's state dict (trunk: Linear, LayerNorm, GELU, Dropout, twice; a Linear(width, 2) head
    per model) as the matrices the forward pass multiplies by."""
    try:
        heads = sorted({int(k.split(".")[1]) for k in arrays if k.startswith("heads.")})
        head_w = np.stack([arrays[f"heads.{i}.weight"] for i in heads])  # (M, 2, width)
        return {
            "first": arrays["trunk.0.weight"].T.astype(np.float32),
            "first_bias": arrays["trunk.0.bias"].astype(np.float32),
            "second": np.ascontiguousarray(arrays["trunk.4.weight"].T, dtype=np.float32),
            "second_bias": arrays["trunk.4.bias"].astype(np.float32),
            "gain0": arrays["trunk.1.weight"],
            "shift0": arrays["trunk.1.bias"],
            "gain1": arrays["trunk.5.weight"],
            "shift1": arrays["trunk.5.bias"],
            # Columns ordered (model, output): one product gives every head's logit and log-cost.
            "heads": np.ascontiguousarray(head_w.transpose(2, 0, 1).reshape(head_w.shape[2], -1), dtype=np.float32),
            "heads_bias": np.stack([arrays[f"heads.{i}.bias"] for i in heads]).reshape(-1).astype(np.float32),
        }
    except KeyError as exc:
        raise ArtifactError(f"the MLP weights lack {exc}") from None
    except ValueError as exc:  # heads of different shapes
        raise ArtifactError(f"the MLP heads do not share one shape ({exc})") from None


class KMeansPredictor(Predictor):
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.centres, self.accuracy, self.cost = arrays["centres"], arrays["accuracy"], arrays["cost"]
        except KeyError as exc:
            raise ArtifactError(f"the K-means arrays lack {exc}") from None

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        c = self.centres
        d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
        labels = d.argmin(1)
        return self.accuracy[labels], self.cost[labels]


class TaskPredictor(Predictor):
    """P(task | query) from linear discriminant weights, times per-(task, model) means."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.weights, self.bias = arrays["weights"], arrays["bias"]
            self.accuracy, self.cost = arrays["accuracy"], arrays["cost"]
        except KeyError as exc:
            raise ArtifactError(f"the task model's arrays lack {exc}") from None

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(x, dtype=np.float64) @ self.weights + self.bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        return p @ self.accuracy, p @ self.cost


def _members(arrays: dict[str, np.ndarray], prefix: str) -> list[dict[str, np.ndarray]]:
    """``{prefix}{i}/name`` arrays grouped by i, in order of i."""
    groups: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        head, _, name = key.partition("/")
        if head.startswith(prefix) and head[len(prefix) :].isdigit():
            groups.setdefault(int(head[len(prefix) :]), {})[name] = value
    return [groups[i] for i in sorted(groups)]


class KMeansBag(Predictor):
    """The mean of many K-means members' predictions, with every distance computed in one product."""

    def __init__(self, members: list[KMeansPredictor]) -> None:
        self.centres = np.concatenate([m.centres for m in members]).astype(np.float64)
        self.norms = (self.centres**2).sum(1)
        self.accuracy = np.concatenate([m.accuracy for m in members]).astype(np.float64)
        self.cost = np.concatenate([m.cost for m in members]).astype(np.float64)
        self.bounds = np.cumsum([0] + [len(m.centres) for m in members])

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        d = self.norms[None, :] - 2.0 * np.asarray(x, dtype=np.float64) @ self.centres.T  # + |x|², same per row
        accuracy = np.zeros((len(x), self.accuracy.shape[1]))
        cost = np.zeros_like(accuracy)
        for start, end in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            nearest = start + d[:, start:end].argmin(1)
            accuracy += self.accuracy[nearest]
            cost += self.cost[nearest]
        members = len(self.bounds) - 1
        return accuracy / members, cost / members


class EnsemblePredictor(Predictor):
    """The ensemble router (:mod:`thrifty.router.ensemble`): the mean of its components, each the mean of
    its members, pulled toward the constant router by the artifact's shrink."""

    def __init__(self, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
        try:
            self.constant = (arrays["constant/accuracy"].astype(np.float64), arrays["constant/cost"].astype(np.float64))
        except KeyError as exc:
            raise ArtifactError(f"the ensemble arrays lack {exc}") from None
        count = arrays.get("constant/count")  # absent from artifacts made before it was kept
        self.unseen = np.zeros(len(self.constant[0]), dtype=bool) if count is None else np.asarray(count) <= 0
        self.shrink = float(settings["shrink"])
        self.line: tuple[np.ndarray, np.ndarray] | None = None
        if settings.get("cost_model", "components") == "line":  # absent from artifacts made before the line
            try:
                self.line = (
                    arrays["constant/cost_intercept"].astype(np.float64),
                    arrays["constant/cost_slope"].astype(np.float64),
                )
            except KeyError as exc:
                raise ArtifactError(f"an ensemble whose costs come from its cost line lacks {exc}") from None
        cost_mean, cost_std = float(settings["cost_mean"]), float(settings["cost_std"])
        mlps, kmeans = _members(arrays, "mlp"), [KMeansPredictor(a) for a in _members(arrays, "kmeans")]
        tasks = _members(arrays, "tasks")
        if len(tasks) > 1:
            raise ArtifactError(f"an ensemble has one task model (tasks0/), not {len(tasks)}")
        self.components: list[Predictor] = [
            *([MlpPredictor(mlps, cost_mean, cost_std)] if mlps else []),
            *([KMeansBag(kmeans)] if kmeans else []),
            *[TaskPredictor(a) for a in tasks],
        ]

    def components_mean(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The unshrunk ensemble: the mean over components, each itself the mean over its members. A model
        with no training cell has nothing to correct its averages with: it gets the constant's."""
        predictions = [component.predict(x) for component in self.components]
        accuracy = np.mean([a for a, _ in predictions], axis=0)
        cost = np.mean([c for _, c in predictions], axis=0)
        unseen = self.unseen
        if unseen.any():
            accuracy[:, unseen], cost[:, unseen] = self.constant[0][unseen], self.constant[1][unseen]
        return accuracy, cost

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        acc0, cost0 = self.constant
        line = None
        if self.line is not None:
            if lengths is None or len(lengths) != len(x):
                raise ValueError("this router's costs come from its cost line: it needs each query's length")
            line = line_cost(self.line, lengths)
        if self.shrink == 0.0 or not self.components:
            accuracy, cost = np.tile(acc0, (len(x), 1)), np.tile(cost0, (len(x), 1))
        else:
            accuracy, cost = self.components_mean(x)
            accuracy, cost = corrected(acc0, accuracy, self.shrink, 1.0), corrected(cost0, cost, self.shrink)
        return accuracy, cost if line is None else line


@dataclass(frozen=True)
class RouterArtifact:
    family: Family
    models: tuple[str, ...]
    embedder: dict[str, Any]  # the identity of the embedder it was trained with
    arrays: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)  # e.g. the MLP's cost scale
    inputs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def predictor(self) -> Predictor:
        if self.family == "mlp":
            return MlpPredictor([self.arrays], float(self.settings["cost_mean"]), float(self.settings["cost_std"]))
        if self.family == "ensemble":
            return EnsemblePredictor(self.arrays, self.settings)
        return KMeansPredictor(self.arrays)

    def checked_predictor(self, dim: int) -> Predictor:
        """The predictor, once it has shown it maps ``dim``-wide embeddings to one column per model."""
        try:
            predictor = self.predictor()
            accuracy, cost = predictor.predict(np.zeros((1, dim), dtype=np.float32), np.ones(1))
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # arrays of the wrong shapes
            raise ArtifactError(f"the {self.family} weights do not fit the manifest ({exc})") from None
        expected = (1, len(self.models))
        if np.shape(accuracy) != expected or np.shape(cost) != expected:
            raise ArtifactError(
                f"the {self.family} weights predict {np.shape(accuracy)[-1]} models; the manifest names "
                f"{len(self.models)}"
            )
        return predictor

    def save(self, out: Path, embedder_folder: Path | None = None, copy_embedder: bool = False) -> Path:
        """Write to ``out`` (which must not exist) through a staging folder: never a torn artifact.

        A static embedder is referenced by its identity (and hash) and the folder it was read from; with
        ``copy_embedder`` its files travel inside the artifact instead (an artifact that stands alone).
        """
        embedder = {k: v for k, v in self.embedder.items() if k != "dir"}
        if self.embedder["kind"] == "static":
            if embedder_folder is None:
                raise ValueError("a router trained on a static embedder must be saved with that embedder")
            if not copy_embedder:
                embedder["dir"] = str(embedder_folder.resolve())
        with ArtifactWriter(out, KIND, VERSION) as writer:
            save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(writer.staging / WEIGHTS))
            if embedder_folder is not None and self.embedder["kind"] == "static" and copy_embedder:
                shutil.copytree(embedder_folder, writer.staging / EMBEDDER_DIR)
            return writer.commit(
                inputs=self.inputs,
                metrics=self.metrics,
                family=self.family,
                models=list(self.models),
                embedder=embedder,
                settings=self.settings,
                training=self.training,
            )


def read_manifest(folder: Path) -> RouterManifest:
    return read_checked_manifest(folder, RouterManifest, kind=KIND, version=VERSION)


def load_artifact(folder: Path) -> RouterArtifact:
    """Read and verify every file against the manifest's hashes; any flaw is an ArtifactError."""
    manifest = load_verified(folder, RouterManifest, kind=KIND, version=VERSION)
    try:
        arrays = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{folder}: {WEIGHTS} is not readable safetensors ({exc})") from None
    return RouterArtifact(
        family=manifest.family,
        models=tuple(manifest.models),
        embedder=manifest.embedder.model_dump(),
        arrays=arrays,
        settings=manifest.settings,
        inputs=manifest.inputs,
        training=manifest.training,
        metrics=manifest.metrics,
    )


def artifact_embedder(folder: Path, artifact: RouterArtifact, embedder_dir: Path | None = None) -> Embedder:
    """The embedder the artifact was trained with; an EmbedderMismatch if what is found differs.

    A static embedder is looked for in the artifact's own ``embedder/`` folder, then in ``embedder_dir``
    (the gateway's setting), then in the folder the manifest recorded at training; the first that exists
    must have the recorded identity.
    """
    kind = artifact.embedder.get("kind")
    embedder: Embedder
    if kind == "static":
        recorded = artifact.embedder.get("dir")
        places = [folder / EMBEDDER_DIR, embedder_dir, Path(recorded) if isinstance(recorded, str) else None]
        found = next((p for p in places if p is not None and (p / "model.safetensors").is_file()), None)
        if found is None:
            raise ArtifactError(
                f"{folder}: its static embedder (sha256 {str(artifact.embedder.get('sha256'))[:12]}…) is neither "
                f"inside the artifact nor at {recorded or 'a recorded folder'}: set the router's embedder_dir to a "
                "folder that holds it, or train with --copy-embedder"
            )
        embedder = StaticEmbedder(found)
    elif kind in EMBEDDER_KINDS:
        embedder = load_embedder(str(kind))
    else:
        raise ArtifactError(f"{folder}: unknown embedder kind '{kind}'")
    embedder.check(artifact.embedder)
    return embedder
