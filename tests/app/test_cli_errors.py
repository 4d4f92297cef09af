"""Every user error of every `haic` command: one line naming the argument, the documented exit
status, no traceback (issue 11's CLI items).

A table of bad command lines runs through `tests/app/_forked.py` in one subprocess that forks a
child per case, so a crash or a hang fails its case instead of the run, and the imports are paid
once. Each case asserts: the exit status (`haic_kernels.app.errors`: 1 unreadable input, 2
usage, 3 checkpoint), stderr holds exactly one line ``haic COMMAND: error: ...`` (warnings
aside) that names the argument or file, no "Traceback", and for usage and checkpoint errors
nothing on stdout (no model ran).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haic_kernels.app.common import bundled_clip
from haic_kernels.app.errors import EXIT_CHECKPOINT, EXIT_FAILED, EXIT_USAGE

DRIVER = Path(__file__).with_name("_forked.py")
ROOT = Path(__file__).resolve().parents[2]
CLIP = str(bundled_clip())
CUDA = torch.cuda.is_available()


def _checkpoints(root: Path) -> dict[str, Path]:
    """A good tiny checkpoint and broken copies of it (weights hard-linked, not copied)."""
    from haic_kernels.models.cogvlm2 import CogVLM2ForCausalLM, get_config, init_random_weights
    from haic_kernels.models.cogvlm2.save import save_checkpoint

    config = get_config("tiny", "video-chat", text={"num_layers": 1}, vision={"num_layers": 1})
    good = root / "good"
    save_checkpoint(init_random_weights(CogVLM2ForCausalLM(config), seed=1), good, config=config)
    cfg = json.loads((good / "config.json").read_text())

    def variant(name: str, config_text: str | None = None, tokenizer: str | None = None) -> Path:
        d = root / name
        d.mkdir()
        for f in good.iterdir():
            os.link(f, d / f.name) if f.suffix == ".safetensors" else shutil.copy(f, d / f.name)
        if config_text is not None:
            (d / "config.json").write_text(config_text)
        if tokenizer is not None:
            (d / "tokenizer.json").write_text(tokenizer)
        return d

    nan_eps = dict(cfg, rms_norm_eps=math.nan)
    str_size = dict(cfg, hidden_size=str(cfg["hidden_size"]))
    out = {
        "good": good,
        "list": variant("list", "[1, 2]"),
        "notjson": variant("notjson", "{not json"),
        "nan": variant("nan", json.dumps(nan_eps).replace("NaN", "NaN")),
        "strsize": variant("strsize", json.dumps(str_size)),
        "badtok": variant("badtok", tokenizer="not a tokenizer"),
    }
    # the tokenizer is read before the weights: a broken tokenizer.json is what gets named,
    # although a weight is missing too
    (out["badtok"] / "model.safetensors").unlink()
    shutil.copy(good / "model.safetensors", out["badtok"] / "model.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(out["badtok"] / "model.safetensors")
    tensors.pop("lm_head.weight")
    save_file(tensors, out["badtok"] / "model.safetensors", metadata={"format": "pt"})
    missing_weight = variant("noweight")
    (missing_weight / "model.safetensors").unlink()
    shutil.copy(out["badtok"] / "model.safetensors", missing_weight / "model.safetensors")
    out["noweight"] = missing_weight
    return out


def _files(tmp: Path) -> dict[str, str]:
    """The paths the table refers to, made in ``tmp``."""
    ck = _checkpoints(tmp / "ck")
    (tmp / "folder").mkdir()
    (tmp / "broken.webm").write_text("not a video")
    (tmp / "broken.png").write_text("not an image")
    (tmp / "m.jsonl").write_text('{"path": "a.webm"}\n{"question": "no path"}\n')
    (tmp / "ok.jsonl").write_text(json.dumps({"path": CLIP}) + "\n")
    paths = {f"ck_{k}": str(v) for k, v in ck.items()}  # the checkpoints: p["ck_good"], ...
    for name in ("folder", "broken.webm", "broken.png", "m.jsonl", "ok.jsonl", "missing.webm",
                 "nock"):  # fmt: skip
        paths[name] = str(tmp / name)
    paths["nodir"] = str(tmp / "no" / "such" / "dir" / "out.json")
    return paths


def _cases(p: dict[str, str]) -> list[tuple[str, list[str], int, str]]:
    """(id, argv, status, text the error line must contain), over the paths of `_files`."""
    folder, missing, nodir = p["folder"], p["missing.webm"], p["nodir"]
    U, C, F = EXIT_USAGE, EXIT_CHECKPOINT, EXIT_FAILED
    cases = [
        ("top: no command", [], U, "COMMAND"),
        ("top: unknown command", ["frobnicate"], U, "invalid choice"),
        ("info: unknown option", ["info", "--bogus"], U, "--bogus"),
        ("run: nothing to answer", ["run"], U, "VIDEO|IMAGE or --manifest"),
        ("run: both inputs", ["run", CLIP, "--manifest", p["ok.jsonl"]], U, "--manifest"),
        ("run: a folder", ["run", folder], U, "is a directory"),
        ("run: missing file", ["run", missing], U, "missing.webm: no such file"),
        ("run: --max-new-tokens 0", ["run", CLIP, "--max-new-tokens", "0"], U,
         "--max-new-tokens"),
        ("run: --max-new-tokens abc", ["run", CLIP, "--max-new-tokens", "abc"], U,
         "--max-new-tokens"),
        ("run: --device bogus", ["run", CLIP, "--device", "bogus"], U, "--device"),
        ("run: a dtype as --device", ["run", CLIP, "--device", "bfloat16"], U, "--dtype"),
        ("run: absent CUDA device", ["run", CLIP, "--device", "cuda:99"], U, "--device cuda:99"),
        ("run: --dtype bogus", ["run", CLIP, "--dtype", "int8"], U, "--dtype"),
        ("run: output folder missing", ["run", CLIP, "--output", nodir], U, "--output"),
        ("run: output is a folder", ["run", CLIP, "--output", folder], U, "--output"),
        ("run: --checkpoint missing", ["run", CLIP, "--checkpoint", p["nock"]], U,
         "--checkpoint"),
        ("run: uncached repo id", ["run", CLIP, "--checkpoint", "nobody/no-such-model"], U,
         "nobody/no-such-model"),
        ("run: config.json a list", ["run", CLIP, "--checkpoint", p["ck_list"]], C,
         "config.json"),
        ("run: config.json not JSON", ["run", CLIP, "--checkpoint", p["ck_notjson"]], C,
         "config.json"),
        ("run: rms_norm_eps NaN", ["run", CLIP, "--checkpoint", p["ck_nan"]], C,
         "rms_norm_eps"),
        ("run: size as a string", ["run", CLIP, "--checkpoint", p["ck_strsize"]], C,
         "hidden_size"),
        ("run: bad tokenizer.json first", ["run", CLIP, "--checkpoint", p["ck_badtok"]], C,
         "tokenizer.json"),
        ("run: a missing weight", ["run", CLIP, "--checkpoint", p["ck_noweight"]], C,
         "lm_head.weight"),
        ("run: --variant with --checkpoint",
         ["run", CLIP, "--checkpoint", p["ck_good"], "--variant", "image"], U, "--variant"),
        ("run: --config with --checkpoint",
         ["run", CLIP, "--checkpoint", p["ck_good"], "--config", "small"], U, "--config"),
        ("run: --template bogus", ["run", CLIP, "--template", "fancy"], U, "--template"),
        ("run: --preprocess bogus", ["run", CLIP, "--preprocess", "slow"], U, "--preprocess"),
        ("run: --temperature 0", ["run", CLIP, "--do-sample", "--temperature", "0"], U,
         "--temperature"),
        ("run: --top-p 1.5", ["run", CLIP, "--do-sample", "--top-p", "1.5"], U, "--top-p"),
        ("run: --top-k -1", ["run", CLIP, "--top-k", "-1"], U, "--top-k"),
        ("run: --repetition-penalty nan", ["run", CLIP, "--repetition-penalty", "nan"], U,
         "--repetition-penalty"),
        ("run: --seed -1", ["run", CLIP, "--seed", "-1"], U, "--seed"),
        ("run: --batch-size 0", ["run", CLIP, "--batch-size", "0"], U, "--batch-size"),
        ("run: prompt past the context", ["run", CLIP, "--prompt", "x" * 9000], U,
         "prompt too long"),
        ("run: --max-new-tokens past the context", ["run", CLIP, "--max-new-tokens", "9000"], U,
         "--max-new-tokens 9000"),
        ("run: unreadable video", ["run", p["broken.webm"]], F, "broken.webm"),
        ("run: unreadable image", ["run", p["broken.png"]], F, "broken.png"),
        ("run: image to a video model", ["run", p["broken.png"], "--variant",
                                         "video-chat"], U, "--variant image"),
        ("run: video to the image model", ["run", CLIP, "--variant", "image"], U,
         "--variant video-chat"),
        ("run: manifest missing", ["run", "--manifest", missing], U, "--manifest"),
        ("run: manifest bad line", ["run", "--manifest", p["m.jsonl"]], U,
         "m.jsonl line 2"),
        ("run: --stream with --manifest",
         ["run", "--manifest", p["ok.jsonl"], "--stream"], U, "--stream"),
        ("chat: no input", ["chat"], U, "VIDEO|IMAGE"),
        ("chat: a folder", ["chat", folder], U, "is a directory"),
        ("chat: missing file", ["chat", missing], U, "no such file"),
        ("chat: --device bogus", ["chat", CLIP, "--device", "bogus"], U, "--device"),
        ("chat: bad config", ["chat", CLIP, "--checkpoint", p["ck_list"]], C, "config.json"),
        ("chat: unreadable video", ["chat", p["broken.webm"]], F, "broken.webm"),
        ("chat: --max-new-tokens 0", ["chat", CLIP, "--max-new-tokens", "0"], U,
         "--max-new-tokens"),
        ("demo: missing video", ["demo", "--video", missing], U, "--video"),
        ("demo: a folder", ["demo", "--video", folder], U, "is a directory"),
        ("demo: unreadable video", ["demo", "--video", p["broken.webm"]], F,
         "broken.webm"),
        ("demo: --max-new-tokens 0", ["demo", "--max-new-tokens", "0"], U, "--max-new-tokens"),
        ("demo: bad config", ["demo", "--checkpoint", p["ck_notjson"]], C, "config.json"),
        ("demo: --device bogus", ["demo", "--device", "bogus"], U, "--device"),
        ("parity: --prompts 0", ["parity", "--prompts", "0"], U, "--prompts"),
        ("parity: --max-new-tokens 0", ["parity", "--max-new-tokens", "0"], U,
         "--max-new-tokens"),
        ("parity: --device bogus", ["parity", "--device", "bogus"], U, "--device"),
        ("parity: --json folder missing", ["parity", "--json", nodir], U, "--json"),
        ("parity: --video missing", ["parity", "--video", missing], U, "--video"),
        ("parity: --variant with --checkpoint",
         ["parity", "--checkpoint", p["ck_good"], "--variant", "image"], U, "--variant"),
        ("parity: bad config", ["parity", "--checkpoint", p["ck_list"]], C, "config.json"),
    ]  # fmt: skip
    if not CUDA:
        cases.append(("run: --config full on a CPU", ["run", CLIP, "--config", "full"], U,
                      "--config full"))  # fmt: skip
        cases.append(("run: --device cuda without one", ["run", CLIP, "--device", "cuda"], U,
                      "no CUDA device"))  # fmt: skip
        cases.append(("run: --backend triton without CUDA or interpreter",
                      ["run", CLIP, "--model", "fast", "--backend", "triton"], U,
                      "--backend triton"))  # fmt: skip
        cases.append(("parity: --backend triton without CUDA or interpreter",
                      ["parity", "--backend", "triton"], U, "--backend triton"))  # fmt: skip
    return cases


class _Names(dict):
    """Placeholder paths: enough to read the table's ids without making its files."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[str, tuple[list[str], int, str, dict]]:
    pytest.importorskip("av", reason="the cases decode the bundled clip (video extra)")
    tmp = tmp_path_factory.mktemp("sweep")
    cases = _cases(_files(tmp))
    (tmp / "cases.json").write_text(json.dumps([argv for _, argv, _, _ in cases]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(tmp / "hf-cache"),
               HF_HUB_OFFLINE="1")  # fmt: skip
    env.pop("TRITON_INTERPRET", None)  # the CLI decides for itself
    subprocess.run([sys.executable, str(DRIVER), str(tmp / "cases.json"), str(tmp / "out.json"),
                    "120"], check=True, timeout=1800, env=env, cwd=tmp)  # fmt: skip
    results = json.loads((tmp / "out.json").read_text())
    return {cid: (argv, status, text, r) for (cid, argv, status, text), r in zip(cases, results)}


@pytest.mark.parametrize("case", [c[0] for c in _cases(_Names())])
def test_user_error_is_one_line_with_its_status(swept, case: str) -> None:
    if case not in swept:
        pytest.skip(f"{case!r} only applies on a machine without CUDA")
    argv, status, text, r = swept[case]
    shown = f"haic {' '.join(a if len(a) < 60 else a[:20] + '...' for a in argv)}"
    assert "signal" not in r and "timeout" not in r, f"{shown}: crashed or hung: {r}"
    assert "Traceback" not in r["stderr"], f"{shown}:\n{r['stderr']}"
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and ": warning: " not in ln]
    assert len(lines) == 1, f"{shown}: expected one error line, got:\n{r['stderr']}"
    prog = f"haic {argv[0]}" if argv and argv[0] in ("info", "run", "chat", "demo", "parity") \
        else "haic"  # fmt: skip
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert text in lines[0], f"{shown}: {text!r} not in {lines[0]!r}"
    assert r["status"] == status, f"{shown}: status {r['status']}, want {status}: {lines[0]}"
    if status in (EXIT_USAGE, EXIT_CHECKPOINT):
        assert "answer" not in r["stdout"] and "model:" not in r["stdout"], r["stdout"]
