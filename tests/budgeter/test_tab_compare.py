"""Savings at equal accuracy against the static frontier, worked by hand."""

from __future__ import annotations

import pytest

from thrifty.budgeter.tab.compare import Point, frontier, over_seeds, saving, thinking_at

STATICS = [
    Point("static-16", 0.02, 50, 90),
    Point("static-64", 0.50, 200, 240),
    Point("static-128", 0.60, 300, 350),
    Point("static-256", 0.60, 400, 440),  # no better than 128: off the frontier
    Point("static-512", 0.66, 450, 490),
]


def test_the_frontier_keeps_what_no_cheaper_level_matches() -> None:
    assert [p.name for p in frontier(STATICS)] == ["static-16", "static-64", "static-128", "static-512"]
    assert [p.name for p in frontier(list(reversed(STATICS)))] == ["static-16", "static-64", "static-128", "static-512"]


def test_thinking_at_interpolates_between_levels() -> None:
    curve = frontier(STATICS)
    assert thinking_at(curve, 0.55) == pytest.approx(250.0)  # halfway from 64 (0.50, 200) to 128 (0.60, 300)
    assert thinking_at(curve, 0.63) == pytest.approx(375.0)  # halfway from 128 to 512
    assert thinking_at(curve, 0.01) == 50  # below the cheapest: its thinking
    assert thinking_at(curve, 0.90) == 450  # above the best: the best's (a lower bound on the saving)
    with pytest.raises(ValueError):
        thinking_at([], 0.5)


def test_saving_is_against_the_frontier_at_equal_accuracy() -> None:
    curve = frontier(STATICS)
    assert saving(Point("tab", 0.63, 150, 200), curve) == pytest.approx(1 - 150 / 375)
    assert saving(Point("tab", 0.70, 225, 260), curve) == pytest.approx(0.5)  # more accurate than all: vs 512
    assert saving(Point("waste", 0.50, 400, 440), curve) == pytest.approx(-1.0)  # twice static-64's thinking


def test_over_seeds_averages_with_sample_spread() -> None:
    mean = over_seeds("tab", [Point("a", 0.5, 100, 150), Point("b", 0.7, 200, 250)])
    assert (mean.accuracy, mean.thinking, mean.tokens, mean.runs) == (pytest.approx(0.6), 150, 200, 2)
    assert mean.accuracy_std == pytest.approx(0.1414, abs=1e-4)
    assert mean.thinking_std == pytest.approx(70.71, abs=1e-2)
    with pytest.raises(ValueError):
        over_seeds("none", [])
