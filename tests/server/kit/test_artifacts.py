"""The artifact kit: staged writes, the manifest last, one schema on load, verification, atomic swaps."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pydantic import Field

from thrifty.server.kit.artifacts import (
    MANIFEST,
    ArtifactError,
    ArtifactWriter,
    Manifest,
    load_verified,
    read_manifest,
    swap_in,
    write_manifest,
)


class ThingManifest(Manifest):
    size: int = Field(..., ge=1)


def _write(target: Path, text: str, *, replace: bool = False) -> Path:
    with ArtifactWriter(target, "test.thing", 1, replace=replace) as writer:
        (writer.staging / "data.txt").write_text(text)
        (writer.staging / "sub").mkdir()
        (writer.staging / "sub" / "more.txt").write_text(text * 2)
        return writer.commit(inputs={"source": "here"}, metrics={"loss": 0.5}, size=len(text))


def test_a_written_artifact_reads_back_verified(tmp_path: Path) -> None:
    folder = _write(tmp_path / "a", "hello")
    manifest = load_verified(folder, ThingManifest, kind="test.thing", version=1)
    assert manifest.size == 5 and manifest.inputs == {"source": "here"} and manifest.metrics == {"loss": 0.5}
    assert set(manifest.files) == {"data.txt", "sub/more.txt"} and manifest.created_at
    assert not (tmp_path / ".a.partial").exists()


def test_a_fault_while_writing_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path / "a", "test.thing", 1) as writer:
        (writer.staging / "data.txt").write_text("half")
        raise RuntimeError("the job died")
    assert list(tmp_path.iterdir()) == []


def test_artifacts_are_never_overwritten_by_accident_and_replaced_whole(tmp_path: Path) -> None:
    folder = _write(tmp_path / "a", "one")
    with pytest.raises(FileExistsError):
        _write(folder, "two")
    # During replacements the folder is always there and complete: the swap is one step (renameat2).
    gaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not ((folder / MANIFEST).is_file() and (folder / "sub" / "more.txt").is_file()):
                gaps.append("incomplete")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(30):
            _write(folder, f"v{i}", replace=True)
    finally:
        stop.set()
        watcher.join()
    assert gaps == []
    assert load_verified(folder, ThingManifest, kind="test.thing", version=1).size == 3
    assert (folder / "data.txt").read_text() == "v29"
    assert not list(tmp_path.glob(".a*")) and not (tmp_path / "a.old").exists()


def test_swap_in_places_a_folder_where_none_was(tmp_path: Path) -> None:
    staging = tmp_path / "s"
    staging.mkdir()
    (staging / "x").write_text("1")
    swap_in(staging, tmp_path / "t")
    assert (tmp_path / "t" / "x").read_text() == "1" and not staging.exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("files"), "files: Field required"),
        (lambda m: m.update(size=0), "size: Input should be greater than or equal to 1"),
        (lambda m: m.update(kind="other"), "holds a 'other' artifact"),
        (lambda m: m.update(version=2), "version 2; this code reads 1"),
        (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "not a file of the artifact's own folder"),
    ],
)
def test_a_manifest_is_checked_against_its_schema(tmp_path: Path, change: object, words: str) -> None:
    folder = _write(tmp_path / "a", "hello")
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)  # type: ignore[operator]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(folder, ThingManifest, kind="test.thing", version=1)


def test_verification_catches_missing_and_changed_files(tmp_path: Path) -> None:
    folder = _write(tmp_path / "a", "hello")
    (folder / "sub" / "more.txt").write_text("tampered")
    with pytest.raises(ArtifactError, match="does not match its hash"):
        load_verified(folder, ThingManifest, kind="test.thing", version=1)
    (folder / "sub" / "more.txt").unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        load_verified(folder, ThingManifest, kind="test.thing", version=1)
    (folder / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="a JSON object"):
        load_verified(folder, ThingManifest, kind="test.thing", version=1)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_verified(tmp_path / "nowhere", ThingManifest, kind="test.thing", version=1)


def test_a_job_folder_gets_its_manifest_last_over_chosen_subfolders(tmp_path: Path) -> None:
    for sub in ("data", "logs"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "f.txt").write_text(sub)
    manifest = write_manifest(tmp_path, "test.job", 3, under=("data",), metrics={"n": 1}, settings={"seed": 0})
    assert manifest["files"].keys() == {"data/f.txt"} and manifest["settings"] == {"seed": 0}
    assert load_verified(tmp_path, Manifest, kind="test.job", version=3).metrics == {"n": 1}
