"""The learned router in the gateway: a trained artifact predicts each model's accuracy A and cost C for the
request, and the gateway sends it to argmax A − λ·C over the models that have a healthy backend.

λ (accuracy per USD: λ = 1000 means one accuracy point, 1.0, is worth $0.001 per request) is chosen per
request, without retraining: the virtual model ``auto`` uses ``lambda``; ``auto:<preset>`` uses a named
preset; an ``x-thrifty-lambda`` header overrides both. The artifact is loaded at start and again on
:meth:`LearnedRouter.reload` (SIGHUP or ``POST /admin/router/reload``): the new one is read and checked
off the event loop, then swapped in at once, so requests in flight finish on the old one and none is
dropped; a reload that fails keeps the old artifact.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thrifty.router.artifact import Predictor, RouterArtifact, artifact_embedder, load_artifact
from thrifty.router.base import AUTO, InvalidRouting, ModelCandidate, NoRoute, Router, RoutingDecision, RoutingRequest
from thrifty.router.embedding import Embedder
from thrifty.router.ensemble import query_lengths
from thrifty.server.kit.reload import ArtifactSlot

LAMBDA_HEADER = "x-thrifty-lambda"
MAX_QUERY_CHARS = 4000  # the embedder reads at most 256 tokens; the request's end is what it is asked


@dataclass(frozen=True)
class Loaded:
    """An artifact read, checked and ready to predict."""

    artifact: RouterArtifact
    embedder: Embedder
    predictor: Predictor
    column: dict[str, int]

    @classmethod
    def read(cls, folder: Path, embedder_dir: Path | None = None) -> Loaded:
        artifact = load_artifact(folder)
        embedder = artifact_embedder(folder, artifact, embedder_dir)
        return cls(
            artifact,
            embedder,
            artifact.checked_predictor(embedder.dim),
            {m: j for j, m in enumerate(artifact.models)},
        )

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.artifact.family,
            "models": list(self.artifact.models),
            "embedder": self.artifact.embedder["kind"],
        }


def query_text(body: Mapping[str, Any]) -> str:
    """What the router routes on: the last user message of a chat (text parts joined), or the prompt. Its
    end (MAX_QUERY_CHARS) is embedded; its whole length feeds an ensemble's cost line."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                    return "\n".join(str(p) for p in parts)
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    return str(prompt or "")


def _problem(error: Any) -> str:
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def parse_lambda(value: str) -> float:
    try:
        lam = float(value)
    except ValueError:
        lam = math.nan
    if not math.isfinite(lam) or lam < 0:
        raise InvalidRouting(f"the {LAMBDA_HEADER} header must be a number ≥ 0, not '{value}'", param=LAMBDA_HEADER)
    return lam


DEFAULT_PRESETS = {"cheap": 30000.0, "balanced": 3000.0, "best": 0.0}
PresetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
Lambda = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class LearnedRouter(Router):
    """Options: ``artifact`` (folder), ``lambda`` (for ``auto``), ``presets`` ({name: λ}, served as
    ``auto:<name>``), ``embedder_dir`` (where the artifact's static embedder is, if not where it was
    trained)."""

    name = "learned"

    class Options(BaseModel):
        """The config's options (``lambda`` is a Python keyword, so the signature cannot name it)."""

        model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

        artifact: str = Field(..., min_length=1, description="the artifact folder")
        lambda_: Lambda = Field(0.0, alias="lambda", description="λ for the virtual model auto")
        presets: dict[PresetName, Lambda] | None = Field(None, description="{name: λ}, served as auto:<name>")
        embedder_dir: str | None = Field(
            None, min_length=1, description="a folder holding the artifact's static embedder (else the recorded one)"
        )

    def __init__(self, artifact: str, presets: Mapping[str, float] | None = None, **options: Any) -> None:
        try:  # the same schema the config file is checked against
            settings = self.Options.model_validate({"artifact": artifact, "presets": presets, **options})
        except ValidationError as exc:
            raise ValueError("; ".join(_problem(e) for e in exc.errors(include_url=False))) from None
        self.default_lambda = settings.lambda_
        chosen = settings.presets if settings.presets is not None else DEFAULT_PRESETS
        self.presets = {f"{AUTO}:{name}": float(lam) for name, lam in chosen.items()}
        self._virtual_models = (AUTO, *self.presets)
        try:
            folder = Path(settings.embedder_dir) if settings.embedder_dir else None
            self._slot = ArtifactSlot(Path(artifact), functools.partial(Loaded.read, embedder_dir=folder))
        except (OSError, ValueError) as exc:  # ArtifactError and EmbedderMismatch are ValueErrors
            raise ValueError(f"router artifact {artifact}: {exc}") from None

    @property
    def virtual_models(self) -> tuple[str, ...]:
        return self._virtual_models

    @property
    def loaded(self) -> Loaded:
        return self._slot.current

    def status(self) -> dict[str, Any]:
        return (
            super().status()
            | self._slot.describe()
            | self._slot.current.describe()
            | {"lambda": self.default_lambda, "presets": self.presets}
        )

    async def reload(self) -> dict[str, Any]:
        """Read the artifact folder again; swap only once the new one is complete and checked."""
        await self._slot.reload()
        return self.status()

    def _lambda(self, request: RoutingRequest) -> float:
        header = request.headers.get(LAMBDA_HEADER)
        if header is not None:
            return parse_lambda(header)
        return self.presets.get(request.requested_model, self.default_lambda)

    def score(self, loaded: Loaded, text: str) -> tuple[np.ndarray, np.ndarray]:
        x = loaded.embedder.encode([text[-MAX_QUERY_CHARS:] or " "])
        accuracy, cost = loaded.predictor.predict(x, query_lengths([text]))
        return accuracy[0], cost[0]

    async def choose(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        lam = self._lambda(request)
        loaded = self._slot.current  # one artifact for the whole decision, even if a reload lands meanwhile
        usable = [c.name for c in candidates if c.name in loaded.column]
        if not usable:
            raise NoRoute("none of the models the router was trained for has a healthy backend")
        text = query_text(request.body)
        if loaded.embedder.kind == "static":
            accuracy, cost = self.score(loaded, text)  # well under a millisecond
        else:
            accuracy, cost = await asyncio.to_thread(self.score, loaded, text)
        columns = [loaded.column[name] for name in usable]
        utility = accuracy[columns] - lam * cost[columns]
        best = int(np.argmax(utility))
        chosen = columns[best]
        return RoutingDecision(
            usable[best],
            self.name,
            {"lambda": lam, "accuracy": float(accuracy[chosen]), "cost": float(cost[chosen])},
        )
