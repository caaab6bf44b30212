"""The allocations TAB is compared with, as policies of the budget environment (observation → budget).

Every budgeted policy obeys the same hard limit as the gateway: a turn's budget never exceeds what is
left of the problem's budget B (:func:`fit`: the largest level that fits, else 0).

- **static**: one ladder level every turn.
- **uniform**: what is left of B split evenly over the turns left (it knows how many turns there are).
- **difficulty heuristic**: the world's own need estimate — the sub-question's digit operations, with
  references to earlier results resolved (:mod:`thrifty.budgeter.tab.difficulty`) — mapped to a level by a
  table calibrated on the training problems: for each amount of work, the smallest level whose training
  turns are (nearly) as often right as at the top level.
- **oracle**: each turn its cheapest level that gets it right (:func:`thrifty.budgeter.world.environment.allocate`),
  read off the table: the ceiling.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thrifty.budgeter.tab.difficulty import estimate_turn
from thrifty.budgeter.tab.features import Context, context_of
from thrifty.budgeter.world.environment import Observation, Policy
from thrifty.budgeter.world.outcomes import OutcomeTable

Budget = Callable[[str, int], int | None]  # (problem, turns) → B
Decide = Callable[[Context], int]  # a budgeted policy's choice for one context, before the limit


def fit(ladder: Sequence[int], level: int | None, remaining: int | None) -> int:
    """``level`` (None: the top of the ladder) brought within what is left of B."""
    want = ladder[-1] if level is None else level
    if remaining is None or want <= remaining:
        return want
    fitting = [b for b in ladder if b <= remaining]
    return fitting[-1] if fitting else 0


def budgeted(decide: Decide, ladder: Sequence[int], budget: Budget, all_subq: bool = False) -> Policy:
    """An environment policy from a context → level rule, under the problem budget ``budget``."""

    def policy(observation: Observation) -> int:
        context = context_of(observation, budget(observation.problem, observation.turns), all_subq)
        return fit(ladder, decide(context), context.remaining)

    return policy


def static_level(level: int) -> Decide:
    return lambda context: level


def uniform(ladder: Sequence[int], turns_of: Callable[[Context], int]) -> Decide:
    """What is left of B over the turns left: the largest level within that share (the smallest if none)."""

    def decide(context: Context) -> int:
        if context.remaining is None:
            return ladder[-1]
        share = context.remaining / max(turns_of(context) - context.turn, 1)
        fitting = [b for b in ladder if b <= share]
        return fitting[-1] if fitting else ladder[0]

    return decide


@dataclass(frozen=True, slots=True)
class Heuristic:
    """Work (digit operations, or digits written when not parsed) → level, calibrated on a table."""

    ladder: tuple[int, ...]
    cuts: tuple[tuple[int, int], ...]  # (at least this much work, this level), ascending

    def level(self, need: int) -> int:
        chosen = self.ladder[0]
        for work, level in self.cuts:
            if need >= work:
                chosen = level
        return chosen

    def __call__(self, context: Context) -> int:
        return self.level(estimate_turn(context.messages).need)

    def to_json(self) -> dict[str, object]:
        return {"ladder": list(self.ladder), "cuts": [list(c) for c in self.cuts]}


def calibrate_heuristic(
    table: OutcomeTable,
    chains_messages: Callable[[str, int], Sequence[dict[str, str]]],
    tolerance: float = 0.01,
    minimum: int = 20,
) -> Heuristic:
    """For each amount of work seen in ``table`` (with at least ``minimum`` turns; rarer amounts pool
    with the next smaller one), the smallest level whose accuracy is within ``tolerance`` of the top's.
    The levels are made non-decreasing in the work."""
    ladder = table.ladder
    by_need: dict[int, list[int]] = defaultdict(list)
    rows = list(table.rows)
    for index, row in enumerate(rows):
        by_need[estimate_turn(chains_messages(row.problem, row.turn)).need].append(index)
    needs = sorted(by_need)
    groups: list[tuple[int, list[int]]] = []
    pending: list[int] = []
    start = needs[0] if needs else 0
    for need in needs:
        if not pending:
            start = need
        pending += by_need[need]
        if len(pending) >= minimum:
            groups.append((start, pending))
            pending = []
    if pending:
        if groups:
            groups[-1] = (groups[-1][0], groups[-1][1] + pending)
        else:
            groups.append((start, pending))
    cuts: list[tuple[int, int]] = []
    floor = ladder[0]
    for start, members in groups:
        accuracy = {b: sum(rows[i].outcome(b).correct for i in members) / len(members) for b in ladder}
        top = max(accuracy.values())
        level = next(b for b in ladder if accuracy[b] >= top - tolerance)
        floor = max(floor, level)
        cuts.append((start, floor))
    return Heuristic(tuple(ladder), tuple(cuts))
