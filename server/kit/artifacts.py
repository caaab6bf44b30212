"""Artifact folders: the one way Thrifty writes, checks and replaces what its jobs produce.

A folder is complete when it has a ``manifest.json``: kind, version, inputs, metrics and the SHA-256 of
every other file, written last. Folders are written through a staging directory next to their final
place (:class:`ArtifactWriter`) and moved in whole, swapping out an older one atomically
(:func:`swap_in`), so a reader sees the old artifact or the new one, never half of either. A job that
fills its folder in stages over a long time writes the manifest last with :func:`write_manifest`.
Reading goes through :func:`read_manifest` against a schema (one per kind, a :class:`Manifest`
subclass) and :func:`verify_files`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "manifest.json"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Schema = TypeVar("Schema", bound="Manifest")
_RENAME_EXCHANGE = 2  # renameat2(2): swap two paths in one step


class ArtifactError(ValueError):
    """The folder is not a complete, intact artifact of a kind and version this code reads."""


class Manifest(BaseModel):
    """Fields every artifact's ``manifest.json`` has; each kind's schema adds its own. Unknown fields are
    kept (a newer writer may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    version: int
    created_at: str | None = None
    files: dict[str, Sha256] = Field(description="every other file of the folder, by relative path")
    inputs: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _inside(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            path = Path(name)
            if path.is_absolute() or ".." in path.parts or name == MANIFEST:
                raise ValueError(f"'{name}' is not a file of the artifact's own folder")
        return files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a sibling ``.partial`` file, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _files(folder: Path, under: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    roots = [folder / part for part in under] if under else [folder]
    for root in roots:
        for path in sorted(root.rglob("*")):
            name = str(path.relative_to(folder))
            if path.is_file() and name != MANIFEST:
                yield name, sha256(path)


def _plain(value: Any) -> Any:
    """What json cannot write itself: NumPy scalars and arrays, paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_manifest(
    folder: Path,
    kind: str,
    version: int,
    *,
    inputs: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    under: tuple[str, ...] = (),
    **fields: Any,
) -> dict[str, Any]:
    """Hash every file of ``folder`` (or of its subfolders ``under``) and write the manifest, atomically, last."""
    manifest = {
        "kind": kind,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
        "inputs": dict(inputs or {}),
        "metrics": dict(metrics or {}),
        "files": dict(_files(folder, under)),
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, default=_plain) + "\n")
    return manifest


def swap_in(staging: Path, target: Path) -> None:
    """Move a complete folder to ``target``, replacing what is there in one step where the OS allows."""
    if not target.exists():
        os.replace(staging, target)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    at_cwd = -100  # AT_FDCWD
    if (
        exchange is not None
        and exchange(at_cwd, os.fsencode(staging), at_cwd, os.fsencode(target), _RENAME_EXCHANGE) == 0
    ):
        shutil.rmtree(staging)  # now holds the old folder
        return
    # No atomic exchange here (another OS, or a file system without it): two renames, the old one last.
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


class ArtifactWriter:
    """Writes an artifact folder: fill :attr:`staging`, then :meth:`commit`. Leaving the ``with`` block
    without committing (an exception) removes the staging folder, so a fault leaves nothing behind.

    ``replace``: an existing folder at ``target`` is swapped out for the new one (atomically); without
    it an existing folder is an error, since artifacts are never overwritten by accident.
    """

    def __init__(self, target: Path, kind: str, version: int, *, replace: bool = False) -> None:
        if target.exists() and not replace:
            raise FileExistsError(f"{target} exists; choose a new folder (artifacts are never overwritten)")
        self.target = target
        self.kind = kind
        self.version = version
        self.staging = target.with_name(f".{target.name}.partial")
        self.manifest: dict[str, Any] | None = None

    def __enter__(self) -> Self:
        shutil.rmtree(self.staging, ignore_errors=True)  # what an interrupted writer left
        self.staging.mkdir(parents=True)
        return self

    def commit(
        self, *, inputs: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None, **fields: Any
    ) -> Path:
        """Write the manifest (hashing everything staged) and move the folder into place."""
        self.manifest = write_manifest(self.staging, self.kind, self.version, inputs=inputs, metrics=metrics, **fields)
        swap_in(self.staging, self.target)
        return self.target

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def read_manifest(folder: Path, schema: type[Schema], *, kind: str, version: int) -> Schema:
    """The folder's manifest, checked against ``schema``; an ArtifactError says what is wrong, in words."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an artifact (no {MANIFEST}; an interrupted job?)")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: a manifest is a JSON object, not {type(raw).__name__}")
    if raw.get("kind") != kind:
        raise ArtifactError(f"{folder} holds a '{raw.get('kind')}' artifact, not a '{kind}' one")
    if raw.get("version") != version:
        raise ArtifactError(f"{folder}: {kind} artifact version {raw.get('version')}; this code reads {version}")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise ArtifactError(f"{path} is malformed: {problems}") from None


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is there and matches its hash."""
    for name, digest in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder}: {name} is missing")
        if sha256(path) != digest:
            raise ArtifactError(f"{folder}: {name} does not match its hash in the manifest")


def load_verified(folder: Path, schema: type[Schema], *, kind: str, version: int) -> Schema:
    """:func:`read_manifest` then :func:`verify_files`: the folder is complete and untouched."""
    manifest = read_manifest(folder, schema, kind=kind, version=version)
    verify_files(folder, manifest)
    return manifest
