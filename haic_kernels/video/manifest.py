"""Manifests: one JSON object per line naming a video and optional text fields.

    {"path": "clips/a.mp4", "question": "What happens?", "id": "a"}
    {"path": "/data/b.webm", "caption": "a dog runs", "answer": "a dog"}

``path`` is required; a relative path is resolved against the manifest's folder (not the
working directory), so a manifest and its clips can move together. ``id``, ``question``,
``answer`` and ``caption`` are optional; any other keys are kept in ``extra``. Blank lines and
lines starting with ``#`` are skipped. A bad line raises `ManifestError` naming the file and
its line number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_FIELDS = ("id", "question", "answer", "caption")


class ManifestError(ValueError):
    """A manifest line is not valid; the message names the file and the line number."""


@dataclass(frozen=True)
class ManifestRecord:
    """One video of a manifest. ``path`` is absolute; ``line`` is 1-based (0: not from a file)."""

    path: str
    id: str | None = None
    question: str | None = None
    answer: str | None = None
    caption: str | None = None
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values (``extra`` merged in)."""
        out: dict[str, Any] = {"path": self.path}
        for key in TEXT_FIELDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


def parse_record(
    obj: Any, base_dir: str | os.PathLike, where: str, line: int = 0
) -> ManifestRecord:
    """One manifest entry (a parsed JSON object) -> `ManifestRecord`; ``where`` prefixes errors."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    path = obj.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ManifestError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    texts: dict[str, str | None] = {}
    for key in TEXT_FIELDS:
        value = obj.get(key)
        if key == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids are common in QA sets
        if value is not None and not isinstance(value, str):
            raise ManifestError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        texts[key] = value
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = Path(base_dir) / p
    extra = {k: v for k, v in obj.items() if k != "path" and k not in TEXT_FIELDS}
    return ManifestRecord(path=str(p.absolute()), line=line, extra=extra, **texts)


def read_manifest(path: str | os.PathLike) -> list[ManifestRecord]:
    """Read a JSON-lines manifest -> records in file order (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {str(path)!r}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {str(path)!r}: cannot read ({e})") from e
    base = p.absolute().parent
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{p.name} line {number}"
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        records.append(parse_record(obj, base, where, number))
    if not records:
        raise ManifestError(f"manifest {str(path)!r} lists no videos")
    return records


def write_manifest(path: str | os.PathLike, records: list[dict[str, Any]]) -> str:
    """Write dicts (each with at least ``path``) as JSON lines; returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or "path" not in rec:
                raise ValueError(f"records[{i}] must be a dict with a 'path' key, got {rec!r}")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return str(path)
