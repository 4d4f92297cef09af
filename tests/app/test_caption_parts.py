"""The parts of `haic caption`, each on its own: manifest ids, the output folder, the unit
committer, the policy for videos that kill their worker, test points, the model stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from haic_kernels.app import cli
from haic_kernels.app.caption.captioner import Captioner, Clip, JobSpec
from haic_kernels.app.caption.job import UnitCommitter
from haic_kernels.app.caption.plan import Entry, plan_units, read_entries
from haic_kernels.app.caption.ray_engine import AttemptLedger, run_guarded
from haic_kernels.app.caption.store import CaptionStore, OutputError, parquet_available
from haic_kernels.app.caption.testpoints import TestPoints
from haic_kernels.app.common import MODELS
from haic_kernels.models.cogvlm2 import get_config
from haic_kernels.video.manifest import ManifestError, ManifestRecord


def _manifest(tmp_path: Path, lines: list[dict]) -> Path:
    m = tmp_path / "m.jsonl"
    m.write_text("# a comment\n" + "".join(json.dumps(x) + "\n" for x in lines))
    return m


# ---- manifest ids and the pending units ---------------------------------------------------


def test_duplicate_ids_are_refused_naming_their_lines(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [{"path": "a.mp4", "id": "a"}, {"path": "b.mp4", "id": "b"},
                             {"path": "c.mp4", "id": "a"}, {"path": "d/e.mp4"},
                             {"path": "d/e.mp4"}])  # fmt: skip
    with pytest.raises(ManifestError) as e:
        read_entries(m)
    msg = str(e.value)
    assert "m.jsonl" in msg and "2 duplicate id(s)" in msg
    assert "id 'a' on lines 2, 4" in msg and "id 'd/e.mp4' on lines 5, 6" in msg  # line 1: #


def test_ids_default_to_the_path_relative_to_the_manifest(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [{"path": "clips/x.webm"}, {"path": "y.webm", "id": 7}])
    entries = read_entries(m)
    assert [(e.pos, e.id) for e in entries] == [(0, "clips/x.webm"), (1, "7")]
    assert entries[0].record.path == str(tmp_path / "clips" / "x.webm")


def test_units_hold_only_pending_entries_at_fixed_positions() -> None:
    entries = [Entry(i, f"v{i}", ManifestRecord(path=f"/v{i}")) for i in range(10)]
    units = plan_units(entries, {"v0", "v1", "v2", "v5"}, shard_size=3)
    assert [(u.index, [e.id for e in u.entries]) for u in units] == [
        (1, ["v3", "v4"]), (2, ["v6", "v7", "v8"]), (3, ["v9"]),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="shard_size"):
        plan_units(entries, set(), shard_size=0)


# ---- the output folder --------------------------------------------------------------------


def _row(i: str, **kw) -> dict:
    return {"id": i, "path": f"/{i}", "answer": f"caption of {i}", "error": None,
            "token_ids": [1, 2], "frame_indices": [0, 4], "timestamps": [0.0, 1.0],
            "timings_ms": {"model": 1.5}, "manifest": {"path": f"/{i}"}, **kw}  # fmt: skip


def test_store_commits_reopens_and_cleans_up(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "out")
    assert store.open({"model": "m"}) == {}
    a = store.commit(0, [_row("a"), _row("b", answer=None, error="no such file")])
    store.commit(1, [_row("c")])
    store.close()
    (a.parent / f".{a.name}.tmp-123").write_text('{"id": "half')  # a killed run's temp file
    store = CaptionStore(tmp_path / "out")
    assert store.open({"model": "m"}) == {"a": a.name, "b": a.name, "c": store.done["c"]}
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]
    assert [r["id"] for r in store.rows()] == ["a", "b", "c"]
    with pytest.raises(OutputError, match="another haic caption job"):
        CaptionStore(tmp_path / "out").open({"model": "m"})  # the first still holds the lock
    store.close()
    with pytest.raises(OutputError, match="model: 'm' there, 'n' now"):
        CaptionStore(tmp_path / "out").open({"model": "n"})


@pytest.mark.skipif(not parquet_available(), reason="Parquet twins need pyarrow (not installed)")
def test_parquet_twins_are_rebuilt_and_orphans_removed(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    store = CaptionStore(tmp_path / "out")
    store.open({})
    a = store.commit(0, [_row("a"), _row("b", answer=None, error="bad")])
    b = store.commit(1, [_row("c")])
    store.close()
    twin_a = tmp_path / "out" / "parquet" / f"{a.stem}.parquet"
    table = pq.read_table(twin_a)
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("error").to_pylist() == [None, "bad"]
    assert json.loads(table.column("timings_ms")[0].as_py()) == {"model": 1.5}
    twin_a.unlink()  # as if killed between the JSONL commit and its twin
    b.unlink()  # the commit gone: its twin is an orphan
    store = CaptionStore(tmp_path / "out")
    assert set(store.open({})) == {"a", "b"}
    twins = sorted(p.name for p in (tmp_path / "out" / "parquet").iterdir())
    assert twins == [f"{a.stem}.parquet"]
    assert pq.read_table(twin_a).column("id").to_pylist() == ["a", "b"]


def test_store_names_a_corrupt_or_duplicated_shard(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "out", parquet=False)
    store.open({})
    a = store.commit(0, [_row("a")])
    store.close()
    copy = a.with_name(a.name.replace("part-00000", "part-00009"))
    copy.write_text(a.read_text())
    with pytest.raises(OutputError, match=f"id 'a' is in both {a.name} and {copy.name}"):
        CaptionStore(tmp_path / "out", parquet=False).open({})
    copy.write_text('{"id": "z"}\nnot json\n')
    with pytest.raises(OutputError, match=f"{copy.name} line 2: not valid JSON"):
        CaptionStore(tmp_path / "out", parquet=False).open({})


def test_committer_writes_a_shard_only_when_its_unit_is_complete(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "out", parquet=False)
    store.open({})
    entries = [Entry(i, f"v{i}", ManifestRecord(path=f"/v{i}")) for i in range(5)]
    c = UnitCommitter(store, plan_units(entries, set(), 3), total=5, progress=False)
    for i in (4, 0, 2):  # out of order, as Ray returns them
        c.add(_row(f"v{i}"))
    assert store.shard_files() == [] and c.pending == 2
    c.add(_row("v3"))
    assert [p.name[:10] for p in store.shard_files()] == ["part-00001"]
    with pytest.raises(ValueError, match="'v3': not pending"):
        c.add(_row("v3"))
    with pytest.raises(ValueError, match="'zz': not pending"):
        c.add(_row("zz"))
    c.add(_row("v1"))
    assert [r["id"] for r in store.rows()] == ["v0", "v1", "v2", "v3", "v4"]  # manifest order
    assert c.rows == 5 and c.shards == 2 and c.pending == 0


# ---- a video that kills its worker --------------------------------------------------------


class _Died(Exception):
    """Stands for the worker process dying: whatever ran is lost, the ledger survives."""


def test_a_video_that_kills_every_attempt_becomes_an_error_the_rest_answers() -> None:
    ledger, ids, attempts = AttemptLedger(), ["a", "b", "c"], []

    def run(group: list[str]) -> list[str]:
        attempts.append(group)
        if "b" in group:
            raise _Died
        return [f"ok {i}" for i in group]

    def call():
        return run_guarded(ledger, "model", ids, lambda: run(ids), lambda i: run([ids[i]])[0],
                           lambda i, n: f"gave up {ids[i]} after {n}", 2)  # fmt: skip

    for _ in range(3):  # the batch, then "b" alone twice: each kills the worker
        with pytest.raises(_Died):
            call()
    assert call() == ["ok a", "gave up b after 2", "ok c"]
    assert attempts == [ids, ["a"], ["b"], ["a"], ["b"], ["a"], ["c"]]
    assert ledger.begin("model", ids) == [(0, 0)] * 3  # nothing left pending for these ids


def test_a_worker_dying_once_costs_one_solo_retry() -> None:
    ledger, deaths = AttemptLedger(), [1]

    def run_all() -> list[int]:
        if deaths[0]:
            deaths[0] -= 1
            raise _Died
        return [1, 2]

    with pytest.raises(_Died):
        run_guarded(ledger, "decode", ["x", "y"], run_all, lambda i: i + 1, None, 2)
    assert run_guarded(ledger, "decode", ["x", "y"], run_all, lambda i: i + 1, None, 2) == [1, 2]


def test_test_points_refuse_malformed_variables() -> None:
    with pytest.raises(ValueError, match="HAIC_CAPTION_PAUSE"):
        TestPoints.from_env({"HAIC_CAPTION_PAUSE": "nowhere:1", "HAIC_CAPTION_PAUSE_FILE": "f"})
    with pytest.raises(ValueError, match="HAIC_CAPTION_CRASH"):
        TestPoints.from_env({"HAIC_CAPTION_CRASH": "model:v1:once"})  # no folder for markers
    points = TestPoints.from_env({"HAIC_CAPTION_CRASH": "decode:a;model:b:once",
                                  "HAIC_CAPTION_CRASH_DIR": "/tmp"})  # fmt: skip
    assert points.crash_on == {("decode", "a"): False, ("model", "b"): True}
    points.crash("model", ["a"])  # not asked to die on that one


# ---- the model stage ----------------------------------------------------------------------


def _spec(**over) -> JobSpec:
    cfg = get_config("tiny", "video-chat")
    opts = {"config": "tiny", "variant": "video-chat", "checkpoint": None, "seed": 3,
            "device": "cpu", "dtype": "float32", "model": "auto", "backend": "torch"}  # fmt: skip
    fields = dict(model_options=opts, model_name=cfg.name, template="chat", policy="chat",
                  num_frames=cfg.max_frames, size=cfg.vision.image_size, preprocess="fast",
                  decoder="auto", prompt="Describe.", max_new_tokens=4)  # fmt: skip
    return JobSpec(**{**fields, **over})


def _clips(n_frames: list[int], size: int) -> list[Clip]:
    g = torch.Generator().manual_seed(11)
    out = []
    for k, f in enumerate(n_frames):
        rec = ManifestRecord(path=f"/v{k}.mp4", id=f"v{k}", question="Why?" + " Why?" * k)
        frames = torch.randint(0, 256, (f, size, size, 3), dtype=torch.uint8, generator=g)
        out.append(Clip(Entry(k, f"v{k}", rec), frames, tuple(range(0, 4 * f, 4)),
                        tuple(float(i) for i in range(f)), "pyav", decode_ms=2.0))  # fmt: skip
    return out


def test_one_ragged_batch_answers_each_video_as_it_would_alone(monkeypatch) -> None:
    assert "auto" in MODELS
    captioner = Captioner.load(_spec())
    assert captioner.kind == "fast"  # --model auto is the fast model, on the CPU too
    clips = _clips([1, 3, 2, 4], captioner.config.vision.image_size)
    clips.insert(2, Clip(Entry(9, "gone", ManifestRecord(path="/gone")), error="no such file"))
    batched = captioner(clips)
    alone = [captioner([c])[0] for c in clips]
    keys = ("id", "answer", "error", "token_ids", "frame_indices", "timestamps", "num_frames")
    assert [[r[k] for k in keys] for r in batched] == [[r[k] for k in keys] for r in alone]
    assert batched[2]["error"] == "no such file" and batched[2]["answer"] is None
    assert batched[0]["timings_ms"]["batch_size"] == 4 and alone[0]["timings_ms"]["batch_size"] == 1
    assert all(len(r["token_ids"]) <= 4 for r in batched if r["error"] is None)
    assert batched[1]["question"] == "Why? Why?" and batched[1]["template"] == "chat"

    # A batch the model fails on is redone video by video; only the failing one is an error.
    real = Captioner._answer

    def flaky(self, group):
        if len(group) > 1 or group[0][0].entry.id == "v3":
            raise RuntimeError("out of memory")
        return real(self, group)

    monkeypatch.setattr(Captioner, "_answer", flaky)
    isolated = captioner(clips)
    assert isolated[4]["error"] == "the model failed: RuntimeError: out of memory"
    same = [i for i in range(5) if i != 4]
    assert [[isolated[i][k] for k in keys] for i in same] == [[alone[i][k] for k in keys]
                                                              for i in same]  # fmt: skip


def test_a_prompt_past_the_context_is_an_error_row() -> None:
    captioner = Captioner.load(_spec(max_new_tokens=10**6))
    (row,) = captioner(_clips([2], captioner.config.vision.image_size))
    assert row["answer"] is None and "context" in row["error"]


# ---- the command's usage errors ----------------------------------------------------------


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    m = _manifest(tmp_path, [{"path": "a.mp4", "id": "a"}, {"path": "b.mp4", "id": "a"}])
    assert cli.main(["caption", str(m), "--output", str(tmp_path / "o")]) == 2
    assert "duplicate id(s)" in capsys.readouterr().err
    m = _manifest(tmp_path, [{"path": "a.mp4", "id": "a"}])
    assert cli.main(["caption", str(m), "--output", str(tmp_path / "o"), "--shard-size", "0"]) == 2
    assert "--shard-size must be at least 1" in capsys.readouterr().err
    assert cli.main(["caption", str(m), "--output", str(tmp_path / "o"), "--variant", "image"]) == 2
    err = capsys.readouterr().err
    assert "haic caption: error:" in err and "image model" in err and len(err.splitlines()) == 1
    (tmp_path / "file").write_text("")
    assert cli.main(["caption", str(m), "--output", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
