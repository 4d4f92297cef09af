"""What both engines share after the model: rows gathered into shards, progress, accounting.

`UnitCommitter` takes rows in any order (the embedded engine's come in manifest order, Ray's
as its actors finish) and commits unit k's shard the moment its last pending row arrives, so
the output only ever holds whole units. It drives the progress bar (tqdm on stderr: videos/s,
ETA, errors so far, counting the rows of earlier runs as done).

`Throughput` is the accounting written to ``DIR/throughput.json`` after each run: wall time,
per-stage busy time, videos/hour, and the model stage's busy share of the wall time (on a GPU
the model stage synchronizes the device at each stage boundary, so its time is device time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .plan import Unit
from .store import THROUGHPUT_FILE, CaptionStore

__all__ = ["Throughput", "UnitCommitter"]


class UnitCommitter:
    """Commit each unit's shard once every pending row of the unit has arrived."""

    def __init__(
        self, store: CaptionStore, units: Sequence[Unit], *, total: int, progress: bool
    ) -> None:
        self.store = store
        self._unit_of: dict[str, int] = {}
        self._pos: dict[str, int] = {}
        self._missing: dict[int, int] = {}
        for u in units:
            self._missing[u.index] = len(u.entries)
            for e in u.entries:
                self._unit_of[e.id], self._pos[e.id] = u.index, e.pos
        self._rows: dict[int, list[dict[str, Any]]] = {u.index: [] for u in units}
        self._seen: set[str] = set()
        self.rows = self.errors = self.shards = 0
        self.write_s = 0.0
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            done = total - len(self._unit_of)
            self._bar = tqdm(total=total, initial=done, unit="video", desc="caption",
                             dynamic_ncols=True)  # fmt: skip
            self._bar.set_postfix(errors=0, refresh=False)

    @property
    def pending(self) -> int:
        """Rows not yet committed."""
        return sum(self._missing.values())

    def add(self, row: dict[str, Any]) -> None:
        """Take one row (ValueError for an id that is not pending or came twice)."""
        vid = row["id"]
        unit = self._unit_of.get(vid)
        if unit is None or self._missing.get(unit, 0) == 0:
            raise ValueError(f"row for id {vid!r}: not pending in this run (or given twice)")
        if vid in self._seen:
            raise ValueError(f"row for id {vid!r} given twice")
        self._seen.add(vid)
        self._rows[unit].append(row)
        self._missing[unit] -= 1
        self.rows += 1
        self.errors += row.get("error") is not None
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(errors=self.errors, refresh=False)
        if self._missing[unit] == 0:
            t0 = time.perf_counter()
            self.store.commit(unit, sorted(self._rows.pop(unit), key=lambda r: self._pos[r["id"]]))
            self.write_s += time.perf_counter() - t0
            self.shards += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class Throughput:
    """One run's accounting. ``stages_s``: busy seconds per stage (summed over workers);
    ``model_stages_s``: the model stage split as `pipeline.answer` times it."""

    engine: str
    device: str
    batch_size: int
    decode_workers: int
    model_workers: int
    videos: int = 0
    errors: int = 0
    shards: int = 0
    wall_s: float = 0.0
    setup_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)
    model_stages_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def videos_per_hour(self) -> float:
        return self.videos / self.wall_s * 3600 if self.wall_s > 0 else 0.0

    @property
    def model_busy_fraction(self) -> float:
        """Model-stage busy time / (wall time x model workers)."""
        busy = self.stages_s.get("model", 0.0)
        return busy / (self.wall_s * self.model_workers) if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages_s"] = {k: round(v, 4) for k, v in self.stages_s.items()}
        out["model_stages_s"] = {k: round(v, 4) for k, v in self.model_stages_s.items()}
        out["wall_s"], out["setup_s"] = round(self.wall_s, 4), round(self.setup_s, 4)
        out["videos_per_hour"] = round(self.videos_per_hour, 1)
        out["model_busy_fraction"] = round(self.model_busy_fraction, 4)
        return out

    def write(self, store: CaptionStore) -> None:
        store.write_json(THROUGHPUT_FILE, self.to_dict())

    def summary(self) -> str:
        """One line for stderr."""
        return (
            f"{self.videos} videos in {self.wall_s:.1f} s ({self.videos_per_hour:.0f} videos/h, "
            f"model stage busy {100 * self.model_busy_fraction:.0f}% of the wall time)"
        )
