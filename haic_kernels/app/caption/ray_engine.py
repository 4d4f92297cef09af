"""The Ray Data engine (``--engine ray``, extra ``haic_kernels[ray]``): many machines, one output.

::

    driver          the pending entries -> ``ray.data.from_items`` (a few bytes each)
      map_batches   `DecodeStage` actors (1 CPU each): the video loader, frames out as bytes
      map_batches   `ModelStage` actors (``num_gpus=1`` on GPUs, 0 on CPUs): the model loaded
                    once per actor in ``__init__``, `Captioner` per batch, rows out as JSON
    driver          ``iter_batches``: rows streamed back to `UnitCommitter`, which writes each
                    unit's shard when it is complete (the same store, resume and shards as the
                    embedded engine; the output folder is the driver's)

Ray Data streams between the stages with backpressure, restarts an actor that dies and
retries its batch (its defaults for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``;
Ray 2.60 deprecates passing either to ``map_batches``). What bounds the retries is
`run_guarded`: an `AttemptLedger` actor counts, per (stage, id), the attempts that began and
never ended. A batch holding such an id is redone one video at a time, and a video whose solo
attempts died ``max_attempts`` times becomes an error row instead of failing the job, so a
batch of B videos is attempted at most 1 + B * max_attempts times. A retried task can return
rows it had already returned: the driver keeps the first.

The cluster: ``--ray-address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets) joins an
existing one; otherwise `start_local_cluster` starts one on this machine whose every port
listens on 127.0.0.1 only (Ray's dashboard and job API have no authentication by default,
CVE-2023-48022), with no dashboard.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...video.manifest import ManifestRecord
from ..errors import checkpoint_error, usage_error
from .captioner import Captioner, Clip, JobSpec, decode_entries
from .job import Throughput, UnitCommitter
from .plan import Entry, Unit
from .testpoints import TestPoints

__all__ = [
    "AttemptLedger",
    "DecodeStage",
    "ModelStage",
    "import_ray",
    "run_guarded",
    "run_ray",
    "start_local_cluster",
]

LOOPBACK = "127.0.0.1"
# Ray treats a node as one of a cluster (and binds its gRPC servers to the machine's routable
# address) unless this is "0"; read when `ray` is imported.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    """The ``ray`` module with Ray Data, or `CommandError` (status 3) naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise checkpoint_error(  # status 3: a package that is not installed
            "--engine ray needs Ray Data: pip install 'haic_kernels[ray]'"
        ) from e
    return ray


def start_local_cluster(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """``ray.init`` a cluster of this machine alone, every port on 127.0.0.1, no dashboard.

    RuntimeError (after shutting it down) if Ray still reports a non-loopback node address.
    """
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray = import_ray()
    from ray._private import ray_constants  # read at import: matters if ray came in earlier

    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             _node_ip_address=LOOPBACK, logging_level=logging.WARNING)  # fmt: skip
    addresses = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
    if addresses != [LOOPBACK]:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray cluster listens on {addresses}, not only {LOOPBACK}: refusing to run"
        )


# ---- a video that kills its worker -------------------------------------------------------


class AttemptLedger:
    """Per (stage, id): attempts that began and did not end, in a batch and alone ("solo").
    One instance per job, as a Ray actor; plain Python, so the policy is testable without Ray."""

    def __init__(self) -> None:
        self._batch: Counter[tuple[str, str]] = Counter()
        self._solo: Counter[tuple[str, str]] = Counter()
        self._setup: dict[str, list[float]] = {}

    def begin(self, stage: str, ids: Sequence[str], solo: bool = False) -> list[tuple[int, int]]:
        """(unfinished batch attempts, unfinished solo attempts) of each id before this one."""
        prior = [(self._batch[(stage, i)], self._solo[(stage, i)]) for i in ids]
        count = self._solo if solo else self._batch
        for i in ids:
            count[(stage, i)] += 1
        return prior

    def end(self, stage: str, ids: Sequence[str]) -> None:
        for i in ids:
            self._batch.pop((stage, i), None)
            self._solo.pop((stage, i), None)

    def note_setup(self, stage: str, seconds: float) -> None:
        """An actor of ``stage`` took ``seconds`` to start (the model stage: loading it)."""
        self._setup.setdefault(stage, []).append(seconds)

    def setup_times(self) -> dict[str, list[float]]:
        return dict(self._setup)


def run_guarded(
    ledger: Any,
    stage: str,
    ids: Sequence[str],
    run_all: Callable[[], list],
    run_one: Callable[[int], Any],
    give_up: Callable[[int, int], Any],
    max_attempts: int,
) -> list:
    """``run_all()`` (one output per id), unless an earlier attempt at one of ``ids`` died:
    then ``run_one(i)`` for each, or ``give_up(i, deaths)`` for one whose solo attempts already
    died ``max_attempts`` times. ``ledger``: `AttemptLedger`'s methods (local or remote)."""
    prior = ledger.begin(stage, ids)
    if not any(batch or solo for batch, solo in prior):
        out = run_all()
        ledger.end(stage, ids)
        return out
    out = []
    for i, (_, solo) in enumerate(prior):
        if solo >= max_attempts:
            out.append(give_up(i, solo))
        else:
            ledger.begin(stage, [ids[i]], solo=True)
            out.append(run_one(i))
        ledger.end(stage, [ids[i]])
    return out


def _gave_up(stage: str, deaths: int) -> str:
    return (
        f"the {stage} worker process died {deaths} times on this video alone (killed, a crash "
        "in the decoder or the model, or out of memory): skipped"
    )


class _RemoteLedger:
    """`AttemptLedger`'s interface over the job's named ledger actor."""

    def __init__(self, name: str) -> None:
        ray = import_ray()
        self._get, self._actor = ray.get, ray.get_actor(name)

    def begin(self, stage: str, ids: Sequence[str], solo: bool = False) -> list[tuple[int, int]]:
        return self._get(self._actor.begin.remote(stage, list(ids), solo))

    def end(self, stage: str, ids: Sequence[str]) -> None:
        self._get(self._actor.end.remote(stage, list(ids)))

    def note_setup(self, stage: str, seconds: float) -> None:
        self._get(self._actor.note_setup.remote(stage, seconds))


# ---- the stages, as Ray Data actors ------------------------------------------------------


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _entries(batch: dict[str, np.ndarray]) -> list[Entry]:
    return [Entry(int(p), str(i), ManifestRecord(**json.loads(r)))
            for p, i, r in zip(batch["pos"], batch["id"], batch["record"])]  # fmt: skip


def _clip_columns(clips: Sequence[Clip]) -> dict[str, np.ndarray]:
    frames = [c.frames.contiguous().cpu() if c.frames is not None else None for c in clips]
    return {
        "pos": np.array([c.entry.pos for c in clips], dtype=np.int64),
        "id": _objects([c.entry.id for c in clips]),
        "record": _objects([json.dumps(dataclasses.asdict(c.entry.record)) for c in clips]),
        "error": _objects(["" if c.error is None else c.error for c in clips]),
        "frames": _objects([b"" if f is None else f.numpy().tobytes() for f in frames]),
        "meta": _objects([json.dumps({
            "shape": [] if f is None else list(f.shape),
            "dtype": "" if f is None else str(f.dtype).removeprefix("torch."),
            "indices": list(c.indices), "timestamps": list(c.timestamps),
            "decoder": c.decoder, "decode_ms": c.decode_ms,
        }) for c, f in zip(clips, frames)]),
    }  # fmt: skip


def _clips(batch: dict[str, np.ndarray]) -> list[Clip]:
    out = []
    for entry, err, data, meta in zip(_entries(batch), batch["error"], batch["frames"],
                                      batch["meta"]):  # fmt: skip
        m = json.loads(meta)
        frames = None
        if not err:
            dtype = getattr(torch, m["dtype"])
            frames = torch.frombuffer(bytearray(data), dtype=dtype).reshape(m["shape"])
        out.append(Clip(entry, frames, tuple(m["indices"]), tuple(m["timestamps"]),
                        m["decoder"], err or None, m["decode_ms"]))  # fmt: skip
    return out


class DecodeStage:
    """Ray Data actor: entries -> decoded clips (the video loader, ``num_workers`` threads)."""

    def __init__(self, spec: JobSpec, ledger: str, max_attempts: int, points: TestPoints,
                 num_workers: int = 1) -> None:  # fmt: skip
        self.spec, self.max_attempts, self.points = spec, max_attempts, points
        self.ledger, self.num_workers = _RemoteLedger(ledger), num_workers

    def _decode(self, entries: list[Entry]) -> list[Clip]:
        self.points.crash("decode", [e.id for e in entries])
        return decode_entries(self.spec, entries, num_workers=self.num_workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = _entries(batch)
        clips = run_guarded(
            self.ledger, "decode", [e.id for e in entries], lambda: self._decode(entries),
            lambda i: self._decode([entries[i]])[0],
            lambda i, n: Clip(entries[i], error=_gave_up("decode", n)), self.max_attempts,
        )  # fmt: skip
        return _clip_columns(clips)


class ModelStage:
    """Ray Data actor: decoded clips -> rows (JSON). The model is loaded once, here."""

    def __init__(self, spec: JobSpec, device: str, ledger: str, max_attempts: int,
                 points: TestPoints) -> None:  # fmt: skip
        t0 = time.perf_counter()
        self.captioner = Captioner.load(spec, device=device)
        self.max_attempts, self.points = max_attempts, points
        self.ledger = _RemoteLedger(ledger)
        self.ledger.note_setup("model", time.perf_counter() - t0)

    def _caption(self, clips: list[Clip]) -> list[dict[str, Any]]:
        self.points.crash("model", [c.entry.id for c in clips if c.error is None])
        return self.captioner(clips)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clips = _clips(batch)
        rows = run_guarded(
            self.ledger, "model", [c.entry.id for c in clips], lambda: self._caption(clips),
            lambda i: self._caption([clips[i]])[0],
            lambda i, n: self.captioner.error_row(clips[i], _gave_up("model", n)),
            self.max_attempts,
        )  # fmt: skip
        return {"id": _objects([r["id"] for r in rows]),
                "row": _objects([json.dumps(r, ensure_ascii=False) for r in rows])}  # fmt: skip


# ---- the driver --------------------------------------------------------------------------


def _connect(ray, args: argparse.Namespace) -> bool:
    """Join the caller's / an addressed cluster, or start a local one (True: we started it)."""
    if ray.is_initialized():
        return False
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    start_local_cluster(num_cpus=args.ray_num_cpus)
    return True


def run_ray(
    spec: JobSpec,
    units: Sequence[Unit],
    committer: UnitCommitter,
    args: argparse.Namespace,
    points: TestPoints,
) -> Throughput:
    """Caption ``units`` on a Ray cluster into ``committer``; the run's accounting."""
    ray = import_ray()
    t_setup = time.perf_counter()
    started = _connect(ray, args)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if args.device not in ("auto", "cpu", "cuda"):
            raise usage_error(f"--device {args.device}: with --engine ray use "
                             "auto, cpu or cuda (each model actor gets a GPU)")  # fmt: skip
        if args.device == "cuda" and gpus == 0:
            raise usage_error("--device cuda but the Ray cluster has no GPU")
        on_gpu = args.device == "cuda" or (args.device == "auto" and gpus > 0)
        model_workers = args.model_workers or (gpus if on_gpu else 1)
        decode_workers = args.decode_workers or max(
            1, int(resources.get("CPU", 1)) - (0 if on_gpu else model_workers)
        )
        acct = Throughput("ray", "cuda" if on_gpu else "cpu", args.batch_size, decode_workers,
                          model_workers)  # fmt: skip
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (tqdm, in the committer) counts committed rows
        ctx.print_on_execution_start = False
        ledger = f"haic-caption-ledger-{uuid.uuid4().hex[:12]}"
        handle = ray.remote(AttemptLedger).options(name=ledger, num_cpus=0).remote()
        items = [{"pos": e.pos, "id": e.id, "record": json.dumps(dataclasses.asdict(e.record))}
                 for u in units for e in u.entries]  # fmt: skip
        common = dict(ledger=ledger, max_attempts=args.max_attempts, points=points)
        pool = ray.data.ActorPoolStrategy
        ds = ray.data.from_items(items).map_batches(
            DecodeStage, fn_constructor_kwargs=dict(spec=spec, **common),
            batch_size=args.batch_size, compute=pool(size=decode_workers), num_cpus=1,
        ).map_batches(
            ModelStage, fn_constructor_kwargs=dict(spec=spec, device=acct.device, **common),
            batch_size=args.batch_size, compute=pool(size=model_workers), num_cpus=1,
            num_gpus=1 if on_gpu else 0,
        )  # fmt: skip
        acct.setup_s = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        seen: set[str] = set()
        busy: Counter[str] = Counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["row"]:
                row = json.loads(text)
                if row["id"] in seen:  # a retried task returning rows again
                    continue
                seen.add(row["id"])
                for stage, ms in (row.get("timings_ms") or {}).items():
                    if stage != "batch_size":
                        busy[stage] += ms / 1e3
                committer.add(row)
        acct.wall_s = time.perf_counter() - t0
        setup = ray.get(handle.setup_times.remote()).get("model", [])
    finally:
        if started:
            ray.shutdown()
    if committer.pending:
        raise RuntimeError(f"Ray Data returned no row for {committer.pending} video(s)")
    acct.videos, acct.errors, acct.shards = committer.rows, committer.errors, committer.shards
    acct.stages_s = {"decode": busy.pop("decode", 0.0), "model": busy.pop("model", 0.0),
                     "write": committer.write_s, "model load (all actors)": sum(setup)}  # fmt: skip
    acct.model_stages_s = {k: v for k, v in busy.items() if v}
    acct.notes.append(
        "stage times are the actors' own (summed from the rows); the wall time also holds the "
        f"actors' start-up ({len(setup)} model actor starts) and Ray's transfers between stages"
    )
    return acct
