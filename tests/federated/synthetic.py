"""Evaluation logs with a known answer: on maths only the big model is right, on poems the small one is
nearly as good and ten times cheaper. Three organisations, each evaluating one model per query."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thrifty.router.eval_log import EvalRecord, write_eval_log

SUBJECTS = ["x squared", "sine x", "log x", "e to the x", "x cubed", "one over x", "the square root of x", "tan x"]
MATHS = ["compute the derivative of {}", "integrate {} over zero to one", "find the limit of {} at zero"]
THEMES = ["the sea", "autumn leaves", "a lost cat", "the moon", "city rain", "old friends", "mountains", "bread"]
POEMS = ["write a short poem about {}", "compose a haiku on {}", "a gentle verse about {}"]
ACCURACY = {"big": (0.95, 0.95), "small": (0.1, 0.85)}  # (maths, poems)
COST = {"big": 1e-3, "small": 1e-4}
MATH_WORDS = ["equation", "integral", "derivative", "algebra", "theorem", "calculus", "matrix", "proof", "polynomial"]
POEM_WORDS = ["rhyme", "verse", "stanza", "sonnet", "lyric", "ballad", "metaphor", "melody", "imagery"]
MATH_PROBE = "find the derivative of tan x using calculus and a proof"
POEM_PROBE = "write a poem about the moon with rhyme and a gentle melody"


def queries(rng: np.random.Generator, n: int, seen: set[str]) -> list[tuple[str, bool]]:
    """Distinct queries, half maths, half poems; topic words dominate each one."""
    out: list[tuple[str, bool]] = []
    while len(out) < n:
        maths = len(out) % 2 == 0
        template, subject, words = (MATHS, SUBJECTS, MATH_WORDS) if maths else (POEMS, THEMES, POEM_WORDS)
        text = template[rng.integers(len(template))].format(subject[rng.integers(len(subject))])
        text += " " + " ".join(rng.choice(words, size=3, replace=False))
        if text not in seen:
            seen.add(text)
            out.append((text, maths))
    return out


def records(
    clients: int = 3, per_client: int = 120, seed: int = 0, models: tuple[str, ...] = ("big", "small")
) -> list[EvalRecord]:
    rng = np.random.default_rng(seed)
    out = []
    seen: set[str] = set()
    for c in range(clients):
        for query, maths in queries(rng, per_client, seen):
            model = models[rng.integers(len(models))]
            p = ACCURACY[model][0 if maths else 1]
            cost = COST[model] * float(rng.uniform(0.8, 1.2))
            score = float(rng.random() < p)
            out.append(
                EvalRecord(f"org{c}: {query}", model, score, cost, task="maths" if maths else "poems", client=f"org{c}")
            )
    return out


def write_log(path: Path, **kwargs: object) -> Path:
    write_eval_log(path, records(**kwargs))  # type: ignore[arg-type]
    return path
