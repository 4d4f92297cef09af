"""What a caption job has to do: the manifest's entries, their ids, and the work still pending.

Every manifest line is an `Entry`: its position in the file (0-based, comments and blank lines
skipped), its id and its `ManifestRecord`. The id is the line's ``id`` field, or, without one,
the video's path relative to the manifest's folder (so a manifest and its clips can move
together and keep their ids). Two lines with one id are refused before anything runs: the
output is keyed by id, and a duplicate would make "every entry exactly once" meaningless.

The pending work is cut into `Unit` s by position: unit k holds the entries at positions
[k * shard_size, (k + 1) * shard_size) whose ids are not in the output yet. A unit is the
grain of the output (one shard file, complete or absent) and of the work: a run that dies
loses at most the units it had started, and a rerun redoes exactly those, in the same batches
(the batch boundaries of an unfinished unit do not depend on where the last run stopped).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...video.manifest import ManifestError, ManifestRecord, read_manifest

__all__ = ["Entry", "Unit", "entry_ids", "plan_units", "read_entries"]

#: Duplicate ids named in the error message (the count says how many more there are).
_DUPLICATES_SHOWN = 5


@dataclass(frozen=True)
class Entry:
    """One manifest line: ``pos`` its 0-based rank among the file's entries, ``id`` its key."""

    pos: int
    id: str
    record: ManifestRecord


@dataclass(frozen=True)
class Unit:
    """Pending entries of shard ``index`` (positions [index * size, (index + 1) * size))."""

    index: int
    entries: tuple[Entry, ...]


def entry_ids(records: Sequence[ManifestRecord], base_dir: str | os.PathLike) -> list[str]:
    """The id of each record: its ``id`` field, else its path relative to ``base_dir``."""
    base = Path(base_dir).absolute()
    return [r.id if r.id is not None else os.path.relpath(r.path, base) for r in records]


def _check_unique(name: str, ids: Sequence[str], records: Sequence[ManifestRecord]) -> None:
    lines: dict[str, list[int]] = defaultdict(list)
    for i, rec in zip(ids, records):
        lines[i].append(rec.line)
    dups = [(i, ls) for i, ls in lines.items() if len(ls) > 1]
    if not dups:
        return
    shown = "; ".join(
        f"id {i!r} on lines {', '.join(map(str, ls))}" for i, ls in dups[:_DUPLICATES_SHOWN]
    )
    more = f" (and {len(dups) - _DUPLICATES_SHOWN} more)" if len(dups) > _DUPLICATES_SHOWN else ""
    raise ManifestError(
        f"{name}: {len(dups)} duplicate id(s), each must name one video: {shown}{more}"
    )


def read_entries(path: str | os.PathLike) -> list[Entry]:
    """The entries of a JSON-lines manifest (`read_manifest`), ids checked to be unique.

    Raises `ManifestError` naming the file and the lines of every duplicated id.
    """
    records = read_manifest(path)
    p = Path(path)
    ids = entry_ids(records, p.absolute().parent)
    _check_unique(p.name, ids, records)
    return [Entry(pos, i, rec) for pos, (i, rec) in enumerate(zip(ids, records))]


def plan_units(entries: Iterable[Entry], done: Iterable[str], shard_size: int) -> list[Unit]:
    """The pending work: entries whose id is not in ``done``, grouped by ``pos // shard_size``,
    in manifest order; units with nothing pending are left out."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    finished = set(done)
    groups: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        if e.id not in finished:
            groups[e.pos // shard_size].append(e)
    return [Unit(k, tuple(groups[k])) for k in sorted(groups)]
