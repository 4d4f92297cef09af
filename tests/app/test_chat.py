"""`haic chat VIDEO|IMAGE`: questions piped on stdin, the video encoded once, history passed to
`build_prompt`, ``clear`` / empty lines / end of input / Ctrl-C as documented. In-process
(`cli.main` with a piped stdin), tiny model, CPU; and once as a user runs it (a subprocess)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

from haic_kernels.app import cli
from haic_kernels.app.common import bundled_clip
from haic_kernels.app.pipeline import decode_clip
from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    build_prompt,
    get_config,
    init_random_weights,
)
from haic_kernels.models.cogvlm2.reference import VisionStages

pytest.importorskip("av", reason="`haic chat` decodes with PyAV (video extra)")

CLIP = str(bundled_clip())
MARK = "CogVLM2: "


def _chat(monkeypatch, capsys, stdin: str, *argv: str) -> tuple[int, list[str], str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["chat", CLIP, "--device", "cpu", *argv])
    out = capsys.readouterr()
    # every answer is "CogVLM2: <text>\n"; random-weight text may hold any character
    answers = [a[:-1] for a in out.out.split(MARK)[1:]]
    return code, answers, out.err


def _expected(question: str, history: list[tuple[str, str]], n: int) -> str:
    """The answer the chat should give: the same model, frames and prompt, built here."""
    config = get_config("tiny", "video-chat")
    model = init_random_weights(CogVLM2ForCausalLM(config), seed=0).eval()
    frames, _ = decode_clip(CLIP, config, policy="chat")
    prompt = build_prompt(ByteTokenizer(), question, frames.shape[0], config, template="chat",
                          history=history)  # fmt: skip
    with torch.inference_mode():
        ids = model.generate(prompt.input_ids[None], prompt.token_type_ids[None], frames,
                             max_new_tokens=n, eos_token_id=config.eos_token_ids)  # fmt: skip
    return ByteTokenizer().decode(ids[0].tolist())


def test_chat_turns_reuse_the_video_and_pass_the_history(monkeypatch, capsys):
    calls = []
    embed = VisionStages.embed_patches

    def counting(self, frames):
        calls.append(frames.shape[0])
        return embed(self, frames)

    monkeypatch.setattr(VisionStages, "embed_patches", counting)
    stdin = "What moves?\n\n   \nAnd then?\nclear\nAnd then?\n"  # ends without "exit": EOF
    code, answers, err = _chat(monkeypatch, capsys, stdin, "--max-new-tokens", "4")
    assert code == 0, err
    assert len(answers) == 3  # the blank lines were skipped
    assert calls == [6]  # one encode of the 6 sampled frames for all three turns
    assert "history cleared" in err
    monkeypatch.setattr(VisionStages, "embed_patches", embed)
    first = _expected("What moves?", [], 4)
    assert answers[0] == first
    assert answers[1] == _expected("And then?", [("What moves?", first)], 4)
    assert answers[2] == _expected("And then?", [], 4)  # after clear: no history
    assert answers[1] != answers[2]  # the history changed the prompt, and so the answer


def test_chat_streams_and_stops_on_ctrl_c(monkeypatch, capsys):
    code, answers, err = _chat(monkeypatch, capsys, "What moves?\n", "--stream",
                               "--max-new-tokens", "4")  # fmt: skip
    assert code == 0 and answers == [_expected("What moves?", [], 4)], err

    class Interrupted(io.StringIO):
        def readline(self, *_):  # the user presses Ctrl-C at the prompt
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    assert cli.main(["chat", CLIP, "--device", "cpu", "--max-new-tokens", "1"]) == 130
    err = capsys.readouterr().err
    assert "haic chat: interrupted" in err and "Traceback" not in err


def test_a_turn_past_the_context_is_an_error_line_and_the_chat_goes_on(monkeypatch, capsys):
    stdin = "x" * 9000 + "\nWhat moves?\n"
    code, answers, err = _chat(monkeypatch, capsys, stdin, "--max-new-tokens", "2")
    assert code == 0
    assert len(answers) == 1 and answers[0] == _expected("What moves?", [], 2)
    assert "haic chat: error: prompt too long" in err and "type 'clear'" in err


def test_chat_as_a_user_runs_it(tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(
        [sys.executable, "-m", "haic_kernels", "chat", CLIP, "--device", "cpu",
         "--max-new-tokens", "2"],
        input="What moves?\nclear\nWhy?\n", capture_output=True, text=True, timeout=300,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(MARK) == 2 and "Traceback" not in r.stderr
