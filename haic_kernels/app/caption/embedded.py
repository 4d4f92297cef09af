"""The embedded engine: one process, no extra dependency, three stages joined by queues.

::

    decode thread     batches of `batch_size` entries of one unit at a time, each decoded by
                      the video loader's `decode_workers` threads (PyAV releases the GIL)
        | bounded queue of `prefetch` decoded batches (backpressure: decode never runs
        v                 further ahead than that, so memory stays bounded)
    model (caller's   `Captioner`: one ragged batch per call to the fast model
    thread)
        | unbounded queue of rows (rows are small)
        v
    writer thread     `UnitCommitter`: a unit's shard is written the moment it is complete

While the model works on batch i the loader decodes batches i+1..i+prefetch, so the model
waits on decode only for the first batch, or when decoding is the slower stage; the time it
waits is measured ("wait for decode") next to its busy time. Batches never straddle units,
so a rerun after a crash forms the same batches for the units it redoes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

from .captioner import Captioner, JobSpec, decode_batches, stage_key
from .job import Throughput, UnitCommitter
from .plan import Unit
from .testpoints import TestPoints

__all__ = ["run_embedded"]

_END = object()


def run_embedded(
    spec: JobSpec,
    captioner: Captioner,
    units: Sequence[Unit],
    committer: UnitCommitter,
    *,
    batch_size: int,
    decode_workers: int,
    prefetch: int = 2,
    points: TestPoints | None = None,
) -> Throughput:
    """Caption every entry of ``units`` into ``committer``'s store; the run's accounting."""
    points = points or TestPoints()
    acct = Throughput("embedded", str(captioner.device), batch_size, decode_workers, 1)
    decoded: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    answered: queue.Queue = queue.Queue()
    stop = threading.Event()
    failures: list[BaseException] = []
    decode_s = [0.0]

    def decode() -> None:
        try:
            for unit in units:  # one loader per unit: its batches never straddle units
                batches = decode_batches(
                    spec, unit.entries, batch_size=batch_size, device=captioner.device,
                    num_workers=decode_workers,
                )  # fmt: skip
                while True:
                    t0 = time.perf_counter()
                    clips = next(batches, None)
                    decode_s[0] += time.perf_counter() - t0
                    if clips is None or not _put(clips):
                        break
                if stop.is_set():
                    return
            decoded.put(_END)
        except BaseException as e:  # handed to the model thread, which raises it
            decoded.put(e)

    def _put(clips) -> bool:
        while not stop.is_set():  # blocks while the queue is full: backpressure
            try:
                decoded.put(clips, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def write() -> None:
        try:
            while (rows := answered.get()) is not _END:
                for row in rows:
                    committer.add(row)
        except BaseException as e:
            failures.append(e)
            stop.set()

    t_start = time.perf_counter()
    threads = [threading.Thread(target=f, name=f"caption-{f.__name__}", daemon=True)
               for f in (decode, write)]  # fmt: skip
    for t in threads:
        t.start()
    wait_s = model_s = 0.0
    try:
        while not failures:
            t0 = time.perf_counter()
            try:
                item = decoded.get(timeout=0.5)
            except queue.Empty:  # decoding is slower, or the writer failed (checked above)
                wait_s += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            wait_s += t1 - t0
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            rows = captioner(item)
            model_s += time.perf_counter() - t1
            points.pause("model-batch")
            answered.put(rows)
    finally:
        stop.set()
        answered.put(_END)
        threads[1].join()
    if failures:
        raise failures[0]
    acct.wall_s = time.perf_counter() - t_start
    acct.videos, acct.errors, acct.shards = committer.rows, committer.errors, committer.shards
    acct.stages_s = {"decode": decode_s[0], "model": model_s, "write": committer.write_s,
                     "model waits for decode": wait_s}  # fmt: skip
    acct.model_stages_s = {stage_key(k): v / 1e3 for k, v in captioner.clock.ms.items()}
    return acct
