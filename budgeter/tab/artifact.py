"""TAB policy artifacts: a folder the training job writes and the gateway's ``tab`` budgeter loads.

::

    manifest.json        kind thrifty.tab_policy, version, inputs, metrics, every file's hash
    policy.json          policy kind (fast | llm), ladder, feature names, All-SubQ or not, the solver(s)
                         it was trained for, the budget B and λ it was trained under, the embedder's identity
    policy.safetensors   fast: the standardisation and the layers; llm: absent (see adapter/)
    embedder/            the static embedder the fast policy's features use, if any (model2vec's files)
    adapter/             llm: the LoRA adapter (PEFT's files) over the base model named in policy.json

Nothing is pickled. Loading verifies every hash and the layout, and a policy whose features were
computed differently (another feature list, another embedder) is refused with a message.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thrifty.budgeter.tab.features import feature_names
from thrifty.budgeter.tab.policy import FastPolicy
from thrifty.server.kit.artifacts import ArtifactError, ArtifactWriter, Manifest, load_verified

KIND = "thrifty.tab_policy"
VERSION = 1
POLICY_JSON = "policy.json"
WEIGHTS = "policy.safetensors"
EMBEDDER_DIR = "embedder"
ADAPTER_DIR = "adapter"


class ProblemBudget(BaseModel):
    """The problem budget B a policy was trained under: tokens per problem, or per sub-question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int | None = Field(None, ge=1, description="B, completion tokens per problem")
    per_turn: int | None = Field(None, ge=1, description="B as completion tokens per sub-question")


class PolicySpec(BaseModel):
    """The contents of ``policy.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["fast", "llm"]
    ladder: tuple[int, ...] = Field(min_length=1)
    all_subq: bool
    solvers: tuple[str, ...] = Field(min_length=1, description="the models it allocates budgets for")
    budget: ProblemBudget
    penalty: float = Field(ge=0, description="λ, reward lost per token allocated beyond B")
    thinking_price: float = Field(0.0, ge=0, description="μ, reward lost per thinking token used")
    features: tuple[str, ...] = ()
    hidden: int = 0
    embedder: dict[str, Any] | None = None
    base_model: dict[str, Any] | None = None  # llm: {"path": ..., "sha256": ...}
    seed: int = 0


@dataclass(frozen=True)
class TabArtifact:
    folder: Path
    spec: PolicySpec
    manifest: Manifest
    fast: FastPolicy | None  # the fast policy's network (None for an llm policy)

    def serves(self, model: str) -> bool:
        return model in self.spec.solvers


def write_fast(
    out: Path,
    spec: PolicySpec,
    policy: FastPolicy,
    *,
    embedder_folder: Path | None = None,
    inputs: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    from safetensors.numpy import save_file

    if tuple(policy.names) != spec.features or tuple(policy.ladder) != spec.ladder:
        raise ValueError("the policy's features or ladder differ from its spec")
    tensors = {"mean": policy.mean, "scale": policy.scale}
    for index, (weight, bias) in enumerate(policy.layers):
        tensors[f"layers.{index}.weight"] = weight
        tensors[f"layers.{index}.bias"] = bias
    with ArtifactWriter(out, KIND, VERSION, replace=replace) as writer:
        (writer.staging / POLICY_JSON).write_text(spec.model_dump_json(indent=1))
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, writer.staging / WEIGHTS)
        if embedder_folder is not None:
            shutil.copytree(
                embedder_folder, writer.staging / EMBEDDER_DIR, ignore=shutil.ignore_patterns("manifest.json")
            )
        return writer.commit(inputs=inputs, metrics=metrics)


def read_artifact(folder: Path) -> TabArtifact:
    """Load and verify a TAB artifact; an ArtifactError says what is wrong with it."""
    manifest = load_verified(folder, Manifest, kind=KIND, version=VERSION)
    try:
        spec = PolicySpec.model_validate(json.loads((folder / POLICY_JSON).read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ArtifactError(f"{folder}: {POLICY_JSON} is not a TAB policy spec ({exc})") from None
    if spec.policy == "llm":
        if not (folder / ADAPTER_DIR / "adapter_config.json").is_file():
            raise ArtifactError(f"{folder}: an llm policy needs its LoRA adapter in {ADAPTER_DIR}/")
        return TabArtifact(folder, spec, manifest, None)
    return TabArtifact(folder, spec, manifest, _read_fast(folder, spec))


def _read_fast(folder: Path, spec: PolicySpec) -> FastPolicy:
    from safetensors.numpy import load_file

    dim = 0 if spec.embedder is None else int(spec.embedder.get("dim", 0))
    expected = feature_names(spec.all_subq, dim)
    if spec.features != expected:
        raise ArtifactError(
            f"{folder}: the policy was trained on {len(spec.features)} features this code does not compute "
            f"(it computes {len(expected)}); retrain it with this version"
        )
    try:
        tensors = load_file(folder / WEIGHTS)
        count = sum(1 for name in tensors if name.endswith(".weight"))
        layers = tuple((tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(count))
        return FastPolicy(spec.ladder, spec.features, tensors["mean"], tensors["scale"], layers)
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{folder}: {WEIGHTS} does not hold the policy's network ({exc})") from None
