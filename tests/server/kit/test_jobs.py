"""The job runner: stages run once, recorded as they finish, other settings refused, checkpoints kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.server.kit.jobs import Job, JobError, StageContext


def test_finished_stages_are_skipped_and_records_kept(tmp_path: Path) -> None:
    runs: list[str] = []

    def stage(name: str) -> object:
        def run(context: StageContext) -> dict[str, object]:
            runs.append(name)
            return {"made": name}

        return run

    job = Job(tmp_path / "job", kind="test job", settings={"seed": 1}, progress=False)
    assert job.stage("a", stage("a"))["made"] == "a"  # type: ignore[arg-type]
    again = Job(tmp_path / "job", kind="test job", settings={"seed": 1}, progress=False)
    record = again.stage("a", stage("a"))  # type: ignore[arg-type]
    again.stage("b", stage("b"))  # type: ignore[arg-type]
    assert runs == ["a", "b"] and record["made"] == "a" and "seconds" in record
    assert list(again.done()) == ["a", "b"]


def test_other_settings_are_refused(tmp_path: Path) -> None:
    Job(tmp_path, kind="test job", settings={"seed": 1}).stage("a", lambda c: {})
    with pytest.raises(JobError, match="holds a test job with other settings"):
        Job(tmp_path, kind="test job", settings={"seed": 2}).stage("a", lambda c: {})


def test_an_interrupted_stage_resumes_from_its_checkpoint_which_goes_once_done(tmp_path: Path) -> None:
    job = Job(tmp_path, kind="test job", settings={})

    def interrupted(context: StageContext) -> dict[str, object]:
        context.checkpoint.mkdir(parents=True)
        (context.checkpoint / "step").write_text("7")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.stage("train:a b", interrupted)
    assert "train:a b" not in job.done()

    def resumed(context: StageContext) -> dict[str, object]:
        return {"from": int((context.checkpoint / "step").read_text())}

    assert job.stage("train:a b", resumed)["from"] == 7
    assert not job.context("train:a b").checkpoint.exists()
    with job.context("x").progress(3) as bar:
        bar.update(3)
    job.fresh()
    assert not tmp_path.exists()
