"""`haic run VIDEO` / `haic run --manifest`: the answer, or one JSON line per video, run as a
user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="`haic run` decodes with PyAV / DALI (video extra)")

from haic_kernels.app.common import bundled_clip
from haic_kernels.video.synthetic import write_clip


def _haic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, "-m", "haic_kernels.app.cli", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )  # fmt: skip


def test_run_manifest_writes_one_line_per_video(tmp_path: Path) -> None:
    opts = {"cpu-used": "8", "deadline": "realtime"}
    write_clip(tmp_path / "a.webm", 12, fps=6, width=64, height=48, options=opts)
    (tmp_path / "broken.webm").write_text("not a video")
    m = tmp_path / "m.jsonl"
    m.write_text(
        json.dumps({"path": "a.webm", "id": "a", "question": "What moves?"}) + "\n"
        + json.dumps({"path": "broken.webm", "id": "b"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    r = _haic("run", "--manifest", str(m), "--output", str(out), "--device", "cpu",
              "--max-new-tokens", "2", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, r.stderr  # one video failed
    assert "1 videos answered, 1 failed" in r.stderr
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "b"}
    a = rows["a"]
    assert a["question"] == "What moves?" and a["path"] == str(tmp_path / "a.webm")
    assert len(a["token_ids"]) <= 2 and isinstance(a["answer"], str)
    assert a["frame_indices"] == [0, 6, 11] and a["frames"] == 3  # 1.83 s rounds to 2
    assert {"decode", "model", "patch_embed", "prefill"} <= set(a["timings_ms"])
    assert "not a readable video" in rows["b"]["error"]


def test_run_bad_manifest_names_the_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.webm"}\n{"question": "no path"}\n')
    r = _haic("run", "--manifest", str(m), "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 2
    assert "m.jsonl line 2" in r.stderr and "'path'" in r.stderr


# ---- `haic run VIDEO` ------------------------------------------------------------------------

CLIP = bundled_clip()


@pytest.mark.parametrize("model", ["reference", "fast"])
def test_run_video_prints_answer_and_stage_timings(tmp_path: Path, model: str) -> None:
    out = tmp_path / "row.json"
    r = _haic("run", str(CLIP), "--config", "tiny", "--device", "cpu", "--model", model,
              "--max-new-tokens", "3", "--prompt", "What moves?", "--output", str(out),
              cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for stage in ("decode video", "patch embed", "vision tower", "compress + adapter",
                  "prefill", "decode tokens", "tokens/s"):  # fmt: skip
        assert stage in r.stdout, (stage, r.stdout)
    assert f"), {model}" in r.stdout and "answer:" in r.stdout
    row = json.loads(out.read_text())
    assert row["model"] == model and row["frames"] == 6 and len(row["token_ids"]) == 3
    assert row["question"] == "What moves?"


@pytest.mark.slow
def test_run_video_same_tokens_fast_and_reference(tmp_path: Path) -> None:
    ids = {}
    for model in ("reference", "fast"):
        out = tmp_path / f"{model}.json"
        r = _haic("run", str(CLIP), "--device", "cpu", "--model", model, "--max-new-tokens", "4",
                  "--output", str(out), cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        ids[model] = json.loads(out.read_text())["token_ids"]
    assert ids["fast"] == ids["reference"]


@pytest.mark.slow
def test_run_video_bad_inputs_fail_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "broken.webm"
    bad.write_text("not a video")
    r = _haic("run", str(bad), "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 1 and "cannot read" in r.stderr and "broken.webm" in r.stderr
    assert "answer" not in r.stdout and "Traceback" not in r.stderr

    r = _haic("run", str(CLIP), "--device", "cpu", "--prompt", "x" * 9000, cwd=tmp_path)
    assert r.returncode == 2 and "prompt too long" in r.stderr, r.stderr
    assert "answer" not in r.stdout and "Traceback" not in r.stderr

    r = _haic("run", cwd=tmp_path)  # neither VIDEO nor --manifest
    assert r.returncode == 2 and "VIDEO|IMAGE or --manifest" in r.stderr


def test_run_video_rejects_missing_or_misshaped_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from haic_kernels.models.cogvlm2 import CogVLM2ForCausalLM, get_config, init_random_weights
    from haic_kernels.models.cogvlm2.weights import save_checkpoint

    config = get_config("tiny", "video-chat")
    save_checkpoint(init_random_weights(CogVLM2ForCausalLM(config), seed=1), tmp_path / "ck",
                    config=config)  # fmt: skip
    (shard,) = (tmp_path / "ck").glob("*.safetensors")
    tensors = load_file(shard)
    tensors.pop("model.layers.1.mlp.language_mlp.down_proj.weight")
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :-1].contiguous()
    save_file(tensors, shard, metadata={"format": "pt"})
    r = _haic("run", str(CLIP), "--device", "cpu", "--checkpoint", str(tmp_path / "ck"),
              cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    msg = r.stdout + r.stderr
    assert "model.layers.1.mlp.language_mlp.down_proj.weight" in msg and "lm_head.weight" in msg
    assert "answer" not in r.stdout
