"""Test points: let a test stop or kill a caption job at an exact place, without sleeps.

Two environment variables, read once when a job starts (and handed to Ray actors with their
other arguments, so they hold on any cluster):

``HAIC_CAPTION_PAUSE=<point>:<n>`` with ``HAIC_CAPTION_PAUSE_FILE=<path>``
    The n-th time (1-based) the job reaches ``point``, it writes ``point`` to the file and
    blocks that thread forever; the test waits for the file and sends SIGKILL. The points are
    ``model-batch`` (a batch's rows computed, not yet handed to the writer), ``shard-tmp`` (a
    shard's temp file written and fsynced, not renamed), ``shard-parquet`` (a shard's JSONL
    committed, its Parquet twin not yet written) and ``shard-committed`` (a shard renamed into
    place, the folder not yet fsynced).

``HAIC_CAPTION_CRASH=<stage>:<id>[:once];...`` with ``HAIC_CAPTION_CRASH_DIR=<dir>``
    The process that runs ``stage`` (``decode`` or ``model``) on the video ``id`` kills itself
    with SIGKILL before it starts: every time, or with ``:once`` only the first time (a marker
    file in the folder remembers it across restarted workers). This is how the tests make a
    Ray actor die mid-run, and a video that kills its actor on every attempt.

Without the variables every call is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CRASH_DIR_ENV", "CRASH_ENV", "PAUSE_ENV", "PAUSE_FILE_ENV", "POINTS", "TestPoints"]

PAUSE_ENV = "HAIC_CAPTION_PAUSE"
PAUSE_FILE_ENV = "HAIC_CAPTION_PAUSE_FILE"
CRASH_ENV = "HAIC_CAPTION_CRASH"
CRASH_DIR_ENV = "HAIC_CAPTION_CRASH_DIR"
POINTS = ("model-batch", "shard-tmp", "shard-parquet", "shard-committed")
STAGES = ("decode", "model")


@dataclass
class TestPoints:
    """Where to pause (``pause``: point -> n) and whom to kill (``crash``: (stage, id) -> once)."""

    __test__ = False  # not a pytest class, despite the name

    pause_at: dict[str, int] = field(default_factory=dict)
    pause_file: str | None = None
    crash_on: dict[tuple[str, str], bool] = field(default_factory=dict)
    crash_dir: str | None = None

    def __post_init__(self) -> None:
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable for Ray actors (the lock is not)
        return {k: v for k, v in self.__dict__.items() if k not in ("_seen", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TestPoints:
        """The points the environment asks for; ValueError naming the variable if malformed."""
        pause_at: dict[str, int] = {}
        if env.get(PAUSE_ENV):
            point, _, n = env[PAUSE_ENV].partition(":")
            if point not in POINTS or not n.isdigit() or int(n) < 1 or not env.get(PAUSE_FILE_ENV):
                raise ValueError(
                    f"{PAUSE_ENV}={env[PAUSE_ENV]!r}: expected <point>:<n> with point in "
                    f"{POINTS}, n >= 1, and {PAUSE_FILE_ENV} set"
                )
            pause_at[point] = int(n)
        crash_on: dict[tuple[str, str], bool] = {}
        for spec in filter(None, env.get(CRASH_ENV, "").split(";")):
            stage, _, rest = spec.partition(":")
            vid, once = (rest[: -len(":once")], True) if rest.endswith(":once") else (rest, False)
            if stage not in STAGES or not vid or (once and not env.get(CRASH_DIR_ENV)):
                raise ValueError(
                    f"{CRASH_ENV}: {spec!r}: expected <stage>:<id>[:once] with stage in {STAGES}"
                    f" (and {CRASH_DIR_ENV} set for :once)"
                )
            crash_on[(stage, vid)] = once
        return cls(pause_at, env.get(PAUSE_FILE_ENV), crash_on, env.get(CRASH_DIR_ENV))

    def pause(self, point: str) -> None:
        """Block this thread forever the n-th time ``point`` is reached (see the module doc)."""
        if point not in self.pause_at:
            return
        with self._lock:
            self._seen[point] += 1
            hit = self._seen[point] == self.pause_at[point]
        if hit:
            tmp = f"{self.pause_file}.tmp"
            Path(tmp).write_text(point)
            os.replace(tmp, str(self.pause_file))  # the test never reads a half-written file
            threading.Event().wait()

    def crash(self, stage: str, ids: Iterable[str]) -> None:
        """SIGKILL this process if ``stage`` is asked to die on one of ``ids``."""
        if not self.crash_on:
            return
        for vid in ids:
            once = self.crash_on.get((stage, vid))
            if once is None:
                continue
            if once:
                marker = Path(str(self.crash_dir)) / f"{stage}-{vid}.crashed"
                try:
                    marker.open("x").close()
                except FileExistsError:
                    continue
            os.kill(os.getpid(), signal.SIGKILL)
