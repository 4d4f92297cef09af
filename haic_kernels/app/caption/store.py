"""The output folder of a caption job: shards that are complete or absent, and what it records.

::

    DIR/job.json                     the settings that decide an answer (model, template, ...)
    DIR/jsonl/part-00003-<hash>.jsonl      one row per video of unit 3 still pending at the time
    DIR/parquet/part-00003-<hash>.parquet  the same rows (when pyarrow is installed)
    DIR/throughput.json              the last run's accounting (per-stage time, videos/hour)
    DIR/.lock                        held (flock) by the one job writing DIR

Each format has its own folder, so ``pandas.read_parquet("DIR/parquet")`` or
``ray.data.read_json("DIR/jsonl")`` read a whole output (temp files start with "." and are
skipped by those readers).

A shard is written to a temp name in the same folder, fsynced, renamed over its final name
(``os.replace``: atomic on POSIX) and the folder fsynced, so a reader, and a rerun after
SIGKILL at any instant, sees either all of a shard or none of it. The JSONL file is the
commit: a Parquet twin is derived from it afterwards (and rebuilt on the next run if the job
died in between), never the other way round. ``<hash>`` is a digest of the shard's ids, so two
shards never share a name.

On `CaptionStore.open`: the lock is taken (a second job on DIR is refused), temp files left by
a killed run are deleted, job.json is written or compared with this run's settings (a mismatch
is refused: the output would mix answers of two set-ups), every committed shard is read (its
ids are done; an id in two shards is reported as corruption, naming both files) and missing
Parquet twins are rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .testpoints import TestPoints

__all__ = ["ROW_FIELDS", "CaptionStore", "OutputError", "parquet_available", "write_atomic"]

JOB_FILE = "job.json"
THROUGHPUT_FILE = "throughput.json"
JSONL_DIR, PARQUET_DIR = "jsonl", "parquet"
_SHARD_RE = re.compile(r"^part-(\d{5,})-([0-9a-f]{12})\.jsonl$")
_TMP_MARK = ".tmp-"

#: Every row has these keys (None where they do not apply: ``answer`` of an error row, ...).
ROW_FIELDS = (
    "id", "path", "question", "answer", "error", "token_ids", "num_frames", "frame_indices",
    "timestamps", "decoder", "model", "implementation", "template", "timings_ms", "manifest",
)  # fmt: skip


class OutputError(ValueError):
    """The output folder cannot be used as it is; the message names the file and the fix."""


def parquet_available() -> bool:
    """Whether pyarrow (and so the Parquet twins) can be used here."""
    try:
        import pyarrow.parquet  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, points: TestPoints | None = None, point: str | None = None
) -> None:
    """Write ``data`` to ``path`` complete or not at all: temp file, fsync, rename, fsync dir.
    ``point``: the test point reached between the fsync and the rename."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if points is not None and point is not None:
        points.pause(point)
    os.replace(tmp, path)
    if points is not None and point is not None:
        points.pause("shard-committed")
    _fsync_dir(path.parent)


def _parquet_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as one Parquet file: scalar and list fields typed, ``timings_ms`` and
    ``manifest`` (free-form objects) as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    s, i64, f64 = pa.string(), pa.int64(), pa.float64()
    types = {
        "token_ids": pa.list_(i64), "num_frames": i64, "frame_indices": pa.list_(i64),
        "timestamps": pa.list_(f64), "timings_ms": s, "manifest": s,
    }  # fmt: skip
    schema = pa.schema([(k, types.get(k, s)) for k in ROW_FIELDS])
    as_json = ("timings_ms", "manifest")
    flat = [
        {k: json.dumps(r.get(k), ensure_ascii=False) if k in as_json else r.get(k)
         for k in ROW_FIELDS}
        for r in rows
    ]  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(flat, schema=schema), buf)
    return buf.getvalue()


class CaptionStore:
    """The output folder ``root`` (see the module docstring). ``parquet``: write Parquet twins
    (None: when pyarrow is installed)."""

    def __init__(
        self, root: str | os.PathLike, *, parquet: bool | None = None,
        points: TestPoints | None = None,
    ) -> None:  # fmt: skip
        self.root = Path(root)
        self.shards = self.root / JSONL_DIR
        self.twins = self.root / PARQUET_DIR
        self.parquet = parquet_available() if parquet is None else parquet
        self.points = points or TestPoints()
        self.done: dict[str, str] = {}  # id -> the shard file holding it
        self._lock_fd: int | None = None

    # ---- opening -------------------------------------------------------------------------

    def open(self, settings: dict[str, Any]) -> dict[str, str]:
        """Lock the folder, clean it, check ``settings`` against job.json; the ids already
        written (id -> shard file name). Raises `OutputError`."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"--output {self.root}: exists and is not a folder")
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
            if self.parquet:
                self.twins.mkdir(exist_ok=True)
        except OSError as e:
            raise OutputError(f"--output {self.root}: cannot create it ({e})") from e
        self._lock()
        try:
            self._scan(settings)
        except BaseException:
            self.close()  # a refused folder is not kept locked
            raise
        return dict(self.done)

    def _scan(self, settings: dict[str, Any]) -> None:
        """Under the lock: temp files out, settings checked, committed ids read, twins fixed."""
        for f in [*self.shards.iterdir(), *self._twin_files()]:
            if _TMP_MARK in f.name:  # a killed run's half-written shard: never committed
                f.unlink()
        self._check_settings(settings)
        self.done = {}
        for path in self.shard_files():
            for row in self._read_shard(path):
                other = self.done.setdefault(row["id"], path.name)
                if other != path.name:
                    raise OutputError(
                        f"{self.shards}: id {row['id']!r} is in both {other} and {path.name}; "
                        "the folder was changed by hand: remove one of the two files"
                    )
            twin = self._twin(path)
            if self.parquet and not twin.exists():  # the job died between the two writes
                write_atomic(twin, _parquet_bytes(list(self._read_shard(path))))
        for twin in self._twin_files():
            if _TMP_MARK not in twin.name and not (self.shards / f"{twin.stem}.jsonl").exists():
                twin.unlink()  # its JSONL (the commit) was deleted: the rows are not done

    def _lock(self) -> None:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise OutputError(
                f"--output {self.root}: another haic caption job is writing this folder"
            ) from e
        self._lock_fd = fd

    def _check_settings(self, settings: dict[str, Any]) -> None:
        job = self.root / JOB_FILE
        wanted = json.loads(json.dumps(settings))  # the JSON form, as stored
        if not job.exists():
            write_atomic(job, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())
            return
        try:
            stored = json.loads(job.read_text())
        except (OSError, ValueError) as e:
            raise OutputError(f"{job}: unreadable ({e}); remove it to start over") from e
        diff = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
        if diff:
            said = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
            raise OutputError(
                f"--output {self.root} holds answers of another set-up ({said}); rerun with the "
                "same options or use another --output"
            )

    def close(self) -> None:
        """Release the folder's lock (also released by the OS if the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- shards --------------------------------------------------------------------------

    def shard_files(self) -> list[Path]:
        """The committed JSONL shards, by name (so by unit)."""
        return sorted(p for p in self.shards.iterdir() if _SHARD_RE.match(p.name))

    def _twin(self, shard: Path) -> Path:
        return self.twins / f"{shard.stem}.parquet"

    def _twin_files(self) -> list[Path]:
        return list(self.twins.iterdir()) if self.twins.is_dir() else []

    def _read_shard(self, path: Path) -> Iterator[dict[str, Any]]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise OutputError(f"{path} line {n}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise OutputError(f"{path} line {n}: not a caption row (no string 'id')")
            yield row

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every committed row, shard by shard."""
        for path in self.shard_files():
            yield from self._read_shard(path)

    def commit(self, unit: int, rows: Sequence[dict[str, Any]]) -> Path:
        """Write ``rows`` (those of unit ``unit``) as one shard: JSONL (the commit), then its
        Parquet twin. Returns the JSONL path."""
        if not rows:
            raise ValueError("commit: a shard needs at least one row")
        ids = [r["id"] for r in rows]
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
        path = self.shards / f"part-{unit:05d}-{digest}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_atomic(path, text.encode(), self.points, "shard-tmp")
        self.done.update(dict.fromkeys(ids, path.name))
        if self.parquet:
            self.points.pause("shard-parquet")
            write_atomic(self._twin(path), _parquet_bytes(rows))
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        """``obj`` as indented JSON in ``root / name``, atomically."""
        path = self.root / name
        write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())
        return path
