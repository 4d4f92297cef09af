"""`haic run` with what a user of a released checkpoint reaches for: IMAGE inputs, --template,
--preprocess, sampling, --stream, eos ids from generation_config.json, a Hub repo id from the
local cache, --max-new-tokens 2048. In-process (`cli.main`), tiny models, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from haic_kernels.app import cli
from haic_kernels.app.common import Setup, bundled_clip
from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    build_prompt,
    get_config,
    init_random_weights,
)
from haic_kernels.models.cogvlm2.save import save_checkpoint
from haic_kernels.tokens import build_position_ids

pytest.importorskip("av", reason="`haic run` decodes with PyAV (video extra)")
PIL = pytest.importorskip("PIL.Image", reason="images need Pillow (video extra)")

CLIP = str(bundled_clip())
SMALL = dict(text={"num_layers": 1}, vision={"num_layers": 1})


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["run", *argv, "--device", "cpu"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(capsys, tmp_path: Path, *argv: str, name: str = "row.json") -> dict:
    code, out, err = _run(capsys, *argv, "--output", str(tmp_path / name))
    assert code == 0, out + err
    return json.loads((tmp_path / name).read_text())


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (70, 90, 3), generator=g, dtype=torch.uint8).numpy()
    path = tmp_path / "pic.png"
    PIL.fromarray(pixels).save(path)
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    config = get_config("tiny", "video-chat", **SMALL)
    model = init_random_weights(CogVLM2ForCausalLM(config), seed=3)
    save_checkpoint(model, tmp_path / "ck", config=config)
    return tmp_path / "ck"


def test_run_image_uses_the_image_model_and_both_models_agree(capsys, tmp_path, picture):
    rows = {m: _row(capsys, tmp_path, str(picture), "--model", m, "--max-new-tokens", "3",
                    "--prompt", "What is it?", name=f"{m}.json")
            for m in ("reference", "fast")}  # fmt: skip
    ref = rows["reference"]
    assert ref["frames"] == 1 and ref["backend"] == "pillow" and ref["template"] == "chat"
    assert rows["fast"]["token_ids"] == ref["token_ids"] and 1 <= len(ref["token_ids"]) <= 3
    config = get_config("tiny", "image")
    # the image model writes no index after its one image: bos, the image, the text
    prompt = build_prompt(ByteTokenizer(), "What is it?", 1, config)
    assert len(prompt) == 1 + config.tokens_per_frame + len("Question: What is it? Answer:")
    assert "decode_image" not in ref["timings_ms"] and "prefill" in ref["timings_ms"]


def test_template_picks_the_prompt_and_the_frame_sampling(capsys, tmp_path):
    chat = _row(capsys, tmp_path, CLIP, "--max-new-tokens", "1", name="chat.json")
    code, _, err = _run(capsys, CLIP, "--max-new-tokens", "1", "--template", "base",
                          "--output", str(tmp_path / "base.json"))  # fmt: skip
    assert code == 0, err
    base = json.loads((tmp_path / "base.json").read_text())
    # the 5 s, 8 fps clip: chat takes one frame a second, base 24 spread over the first 60 s
    assert (chat["template"], chat["frames"]) == ("chat", 6)
    assert (base["template"], base["frames"]) == ("base", 24)
    warning = [ln for ln in err.splitlines() if ": warning: " in ln]
    assert len(warning) == 1 and "template 'base' (chosen) differs" in warning[0], err
    assert "'base' policy" in warning[0]


def test_a_checkpoint_runs_the_demos_template_and_stops_on_every_eos_id(
    capsys, tmp_path, checkpoint
):
    """config.json says template_version base (as the caption release's does): the run uses
    chat, as the official scripts do, and says so; an id of generation_config.json stops it."""
    cfg_file = checkpoint / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["template_version"] = "base"
    cfg_file.write_text(json.dumps(cfg))
    args = (CLIP, "--checkpoint", str(checkpoint), "--max-new-tokens", "6")
    code, _, err = _run(capsys, *args, "--output", str(tmp_path / "free.json"))
    assert code == 0, err
    assert (
        "template 'chat' (the official demos' choice) differs from template_version 'base'" in err
    )
    free = json.loads((tmp_path / "free.json").read_text())
    assert free["template"] == "chat" and free["frames"] == 6
    ids = free["token_ids"]
    assert len(ids) == 6
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    (checkpoint / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids[k]]}))
    stopped = _row(capsys, tmp_path, *args, name="stopped.json")
    assert stopped["token_ids"] == ids[: k + 1]


def test_sampling_flags_are_seeded_and_the_same_on_both_models(capsys, tmp_path):
    flags = ("--do-sample", "--temperature", "1.5", "--top-k", "100", "--top-p", "0.95",
             "--repetition-penalty", "1.1", "--max-new-tokens", "6")  # fmt: skip
    a = _row(capsys, tmp_path, CLIP, *flags, "--seed", "5", name="a.json")
    b = _row(capsys, tmp_path, CLIP, *flags, "--seed", "5", "--model", "fast", name="b.json")
    greedy = _row(capsys, tmp_path, CLIP, "--max-new-tokens", "6", "--seed", "5", name="g.json")
    assert a["token_ids"] == b["token_ids"] != greedy["token_ids"]
    code, _, err = _run(capsys, CLIP, "--temperature", "0.5", "--max-new-tokens", "1")
    assert code == 0 and "--temperature only apply with --do-sample" in err


def test_stream_prints_the_answer_as_it_comes(capsys, tmp_path):
    code, out, err = _run(capsys, CLIP, "--stream", "--max-new-tokens", "5",
                          "--output", str(tmp_path / "row.json"))  # fmt: skip
    assert code == 0, err
    row = json.loads((tmp_path / "row.json").read_text())
    streamed = out.split("answer: ", 1)[1].split("\nstage timings", 1)[0]
    assert streamed == row["answer"] and len(row["token_ids"]) == 5
    assert out.index("question:") < out.index("answer: ") < out.index("stage timings")


def test_release_preprocessing_runs_on_both_models(capsys, tmp_path):
    rows = [
        _row(capsys, tmp_path, CLIP, "--preprocess", "release", "--model", m,
             "--max-new-tokens", "3", name=f"{m}.json")
        for m in ("reference", "fast")
    ]  # fmt: skip
    assert rows[0]["token_ids"] == rows[1]["token_ids"]
    code, out, _ = _run(capsys, CLIP, "--preprocess", "release", "--max-new-tokens", "1")
    assert code == 0 and "preprocess release" in out


def test_a_repo_id_resolves_from_the_local_cache(capsys, tmp_path, checkpoint, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="repo ids need the hub extra")
    cache = tmp_path / "hub"
    commit = "1" * 40
    repo = cache / "models--someone--cogvlm2-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    checkpoint.rename(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, CLIP, "--checkpoint", "someone/cogvlm2-tiny",
                          "--max-new-tokens", "2")  # fmt: skip
    assert code == 0, err
    assert "checkpoint someone/cogvlm2-tiny" in out
    code, out, err = _run(capsys, CLIP, "--checkpoint", "someone/not-cached")
    assert code == 2 and "not-cached" in err and "local Hugging Face cache" in err


def test_max_new_tokens_2048_fits_the_releases_context():
    """The video release's config.json says max_position_embeddings 2048; its context is 8192,
    so the demos' --max-new-tokens 2048 after 24 frames is accepted; the default is cut."""
    config = get_config("full", "video-chat")
    assert config.text.max_position_embeddings == 2048
    prompt = build_prompt(ByteTokenizer(), "Describe this video.", 24, config)
    setup = Setup("haic run", torch.device("cpu"), torch.float32, config, Path("ck"),
                  ByteTokenizer(), "chat", "chat", "release", 2048)  # fmt: skip
    assert setup.new_tokens(prompt) == 2048
    setup.max_new_tokens = 8192
    with pytest.raises(SystemExit, match="--max-new-tokens 8192"):
        setup.new_tokens(prompt)
    setup.max_new_tokens = None  # the default: 2048 for a checkpoint, cut to the context
    assert setup.new_tokens(prompt) == 2048
    long = build_prompt(ByteTokenizer(), "x" * 7000, 24, config)
    last = int(build_position_ids(long.token_type_ids).max())
    assert setup.new_tokens(long) == 8192 - last < 2048


def test_precision_fp8_runs_the_fast_model_and_says_it_is_emulated(capsys, tmp_path):
    """--precision fp8 implies the fast model (also on the CPU) and names its fp8_linear
    backend in the row; the reference model has no fp8 option."""
    with pytest.warns(UserWarning, match="emulated"):
        row = _row(capsys, tmp_path, CLIP, "--precision", "fp8", "--max-new-tokens", "2",
                   "--config", "tiny", *("--seed", "1"))  # fmt: skip
    assert row["model"] == "fast, precision fp8 (fp8_linear emulated)"
    assert 1 <= len(row["token_ids"]) <= 2
    code, out, err = _run(capsys, CLIP, "--precision", "fp8", "--model", "reference")
    assert code == 2 and "--precision fp8" in err, out + err
