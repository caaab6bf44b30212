"""The evaluation-log format shared by the world's report and the router jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.router.eval_log import EvalLogError, EvalRecord, read_eval_log, write_eval_log


def test_round_trip_keeps_optional_and_extra_fields(tmp_path: Path) -> None:
    records = [
        EvalRecord("x1 = 2+2", "dense-s", 1.0, 2e-6, task="add", extra={"bucket": "easy", "tokens": {"prompt": 3}}),
        EvalRecord("x1 = 2+2", "dense-m", 0.0, 9e-6, client="org-b"),
    ]
    path = tmp_path / "log.jsonl"
    assert write_eval_log(path, records) == 2
    assert list(read_eval_log(path)) == records
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "model": "m", "score": 1}', "missing cost"),
        ('{"query": "q", "model": "m", "score": 1.5, "cost": 0}', "score must be in [0, 1]"),
        ('{"query": "q", "model": "m", "score": 1, "cost": -1}', "cost must be"),
        ('{"query": "", "model": "m", "score": 1, "cost": 0}', "non-empty"),
        ('{"query": "q", "model": "m", "score": "high", "cost": 0}', "could not convert"),
        ("not json", "Expecting value"),
    ],
)
def test_bad_records_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"query": "q", "model": "m", "score": 1, "cost": 0}\n\n' + line + "\n")
    with pytest.raises(EvalLogError, match=rf"log\.jsonl:3: .*{message[:12]}") as caught:
        list(read_eval_log(path))
    assert message in str(caught.value)
