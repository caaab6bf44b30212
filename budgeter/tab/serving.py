"""The ``tab`` budgeter: a trained TAB policy choosing each turn's thinking budget in the gateway.

Config::

    budgeter:
      tab:
        artifact: data/tab/fast            # a folder `thrifty train budgeter` wrote
        fallback: {static: {budget: 256}}  # for models the policy was not trained for (the default)

For each turn the policy reads what it was trained on, rebuilt from the request and the session:
the request's messages (the conversation so far, this turn's sub-question last), the turn's index,
the problem's budget B and what its turns spent (the session's ledger), the previous turn's budget
and thinking tokens, and for an All-SubQ policy the plan (``thrifty.plan``). It picks a level of its
ladder among those that fit in what is left of B (0 when none does). A model the artifact was not
trained for goes to the fallback policy rather than to a guess. The artifact reloads on SIGHUP or
``POST /admin/budgeter/reload``; a broken one is refused and the loaded policy keeps serving.

The fast policy runs in NumPy in the event loop (microseconds). The llm policy (SmolLM2 with its LoRA
adapter) runs in process in a worker thread, one decision at a time; on this CPU a decision costs tens
of milliseconds (benchmarks/budgeter/RESULTS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field

from thrifty.budgeter.base import BudgetDecision, Budgeter, BudgetRequest
from thrifty.budgeter.tab.artifact import EMBEDDER_DIR, TabArtifact, read_artifact
from thrifty.budgeter.tab.features import Context, context_of, featurize
from thrifty.budgeter.tab.policy import allowed
from thrifty.server.kit.artifacts import ArtifactError
from thrifty.server.kit.reload import ArtifactSlot

if TYPE_CHECKING:
    from thrifty.budgeter.world.environment import Observation, Policy

DEFAULT_FALLBACK: dict[str, dict[str, Any]] = {"static": {"budget": 256}}


class _Loaded:
    """An artifact with what serving it needs: the embedder, or the LLM scorer."""

    def __init__(self, folder: Path) -> None:
        self.artifact: TabArtifact = read_artifact(folder)
        spec = self.artifact.spec
        self.embed: Any = None
        self.scorer: Any = None
        if spec.embedder is not None:
            from thrifty.router.embedding import EmbedderMismatch, StaticEmbedder

            embedder = StaticEmbedder(folder / EMBEDDER_DIR)
            try:
                embedder.check(spec.embedder)
            except EmbedderMismatch as exc:
                raise ArtifactError(f"{folder}: {exc}") from None
            self.embed = embedder.encode
        if spec.policy == "llm":
            from thrifty.budgeter.tab.llm import LlmScorer

            base = spec.base_model or {}
            self.scorer = LlmScorer(
                Path(str(base.get("path"))),
                spec.ladder,
                "all" if spec.all_subq else "history",
                spec.all_subq,
                adapter=folder / "adapter",
            )
        self.lock = asyncio.Lock()  # the LLM scores one decision at a time


def context_of_request(request: BudgetRequest, all_subq: bool) -> Context:
    """What a TAB policy sees of a request: its messages, and the session's ledger."""
    body = request.body
    messages = body.get("messages")
    if not isinstance(messages, list):  # a completions request: its prompt is the one message
        prompt = body.get("prompt")
        messages = [{"role": "user", "content": prompt if isinstance(prompt, str) else ""}]
    session = request.session
    last = session.turns[-1] if session is not None and session.turns else None
    return Context(
        messages=tuple(m for m in messages if isinstance(m, Mapping)),
        turn=session.turn_count if session is not None else 0,
        budget=session.budget if session is not None else None,
        spent=session.spent if session is not None else 0,
        last_budget=last.thinking_budget if last is not None else None,
        last_thinking=last.reasoning_tokens if last is not None else 0,
        plan=request.plan if all_subq else None,
    )


class TabBudgeter(Budgeter):
    """Options: ``artifact`` (a TAB policy folder), ``fallback`` (a budget policy for other models)."""

    name = "tab"

    def __init__(
        self,
        artifact: Annotated[str, Field(min_length=1)],
        fallback: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        from thrifty.budgeter.registry import build_budgeter

        choice = fallback or DEFAULT_FALLBACK
        if len(choice) != 1 or next(iter(choice)) == self.name:
            raise ValueError("'fallback' names one budget policy other than tab, e.g. {static: {budget: 256}}")
        ((policy, options),) = choice.items()
        self.fallback = build_budgeter(policy, options)
        try:
            self._slot = ArtifactSlot(Path(artifact), _Loaded)
        except (OSError, ValueError) as exc:
            raise ValueError(f"TAB policy {artifact}: {exc}") from None

    def levels(self) -> tuple[int, ...]:
        return self._slot.current.artifact.spec.ladder

    def status(self) -> dict[str, Any]:
        spec = self._slot.current.artifact.spec
        return self._slot.describe() | {
            "policy": spec.policy,
            "all_subq": spec.all_subq,
            "ladder": list(spec.ladder),
            "solvers": list(spec.solvers),
            "trained_budget": spec.budget.tokens,
            "penalty": spec.penalty,
            "fallback": {self.fallback.name: self.fallback.status()},
        }

    async def reload(self) -> dict[str, Any]:
        await self._slot.reload()
        return self.status()

    async def decide(self, request: BudgetRequest) -> int | None:
        return (await self.explain(request)).budget

    async def explain(self, request: BudgetRequest) -> BudgetDecision:
        loaded = self._slot.current
        spec = loaded.artifact.spec
        if not loaded.artifact.serves(request.model):
            decided = await self.fallback.explain(request)
            return BudgetDecision(decided.budget, f"fallback:{decided.policy}", decided.detail)
        context = context_of_request(request, spec.all_subq)
        if loaded.scorer is not None:
            async with loaded.lock:
                return await asyncio.to_thread(decide, loaded, context)
        return decide(loaded, context)


def decide(loaded: _Loaded, context: Context) -> BudgetDecision:
    """The policy's greedy level among those that fit in what is left of B (0 when none does)."""
    spec = loaded.artifact.spec
    mask = allowed(spec.ladder, context.remaining)
    if loaded.scorer is not None:
        budget, probabilities = loaded.scorer.choose(context, mask)
    else:
        assert loaded.artifact.fast is not None
        features = featurize([context], spec.all_subq, loaded.embed)[0]
        probabilities = loaded.artifact.fast.distribution(features[None, :], mask[None, :])[0]
        budget = spec.ladder[int(np.argmax(probabilities))] if mask.any() else 0
    shares = zip(spec.ladder, probabilities, strict=True)
    detail = {"distribution": {str(level): round(float(p), 4) for level, p in shares}}
    return BudgetDecision(budget, f"tab:{spec.policy}", detail)


def environment_policy(folder: Path, budget: Callable[[str, int], int | None]) -> Policy:
    """A TAB artifact as a budget-environment policy, deciding with the gateway's own code: what the
    table predicts the gateway will do. ``budget``: (problem, turns) → B."""
    loaded = _Loaded(folder)

    def policy(observation: Observation) -> int:
        context = context_of(observation, budget(observation.problem, observation.turns), loaded.artifact.spec.all_subq)
        return int(decide(loaded, context).budget or 0)

    return policy
