"""What every artifact shares: content hashes, writes that never leave a half-written file, and the one
way a manifest is read and checked (:func:`read_manifest` against a schema).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "manifest.json"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Schema = TypeVar("Schema", bound="Manifest")


class ArtifactError(ValueError):
    """The folder is not a complete, intact artifact of a kind and version this code reads."""


class Manifest(BaseModel):
    """Fields every artifact's ``manifest.json`` has; each kind's schema adds its own. Unknown fields are
    kept (a newer writer may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    version: int
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
