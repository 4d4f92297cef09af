"""Prompt ids against the release's ``build_conversation_input_ids``, restated from its code, with
a real Llama-3 tokenizer: every model x template x history, and the template choice."""

from __future__ import annotations

import pytest

from haic_kernels.models.cogvlm2 import build_prompt, get_config
from haic_kernels.models.cogvlm2.templates import default_template, prompt_text, resolve_template
from tests.models.cogvlm2._llama3 import MetaEncoder

BOS, PAD = 128000, 128002


def release_text(template: str, history: list[tuple[str, str]], query: str) -> str:
    """The release's ``_history_to_prompt``, restated."""
    if template == "base":
        return query
    fmt = {"vqa": "Short answer:", "chat": "Answer:"}[template]
    out = ""
    for q, a in history:
        out += "Question: " + q + f" {fmt} " + a + "\n"
    return out + f"Question: {query} {fmt}"


def release_video(tok, query, history, num_frames, template):
    """The video release: 66 placeholders per frame, the frame's index after each (chat only)."""
    ids, types = [BOS], [0]
    for t in range(num_frames):
        ids += [PAD] * 66
        types += [1] * 66
        if template == "chat":
            idx = tok.encode(str(t))
            ids += idx
            types += [0] * len(idx)
    text = tok.encode(release_text(template, history, query))
    return ids + text, types + [0] * len(text)


def release_image(tok, query, history, with_image, template, image_size=1344, patch=14):
    """The image release: (image_size // patch // 2)^2 + 2 placeholders, no index."""
    ids, types = [BOS], [0]
    if with_image:
        n = (image_size // patch // 2) ** 2 + 2
        ids += [PAD] * n
        types += [1] * n
    text = tok.encode(release_text(template, history, query))
    return ids + text, types + [0] * len(text)


HISTORIES = [
    [],
    [("What happens first?", "A dog runs.")],
    [("Who is there?", "Two people, 3 cats."), ("And then?", "They leave at 10:45.\nEnd.")],
]


@pytest.fixture(scope="module")
def tok():
    return MetaEncoder()


@pytest.mark.parametrize("template", ["chat", "base", "vqa"])
@pytest.mark.parametrize("history", HISTORIES, ids=["h0", "h1", "h2"])
@pytest.mark.parametrize("frames", [0, 1, 13, 24])
def test_video_prompt_is_the_release(tok, template, history, frames):
    cfg = get_config("full", "video-chat")
    query = "Describe this video in detail, frame 7 included?"
    p = build_prompt(tok, query, frames, cfg, history=history, template=template)
    ids, types = release_video(tok, query, history, frames, template)
    assert p.input_ids.tolist() == ids
    assert p.token_type_ids.tolist() == types


@pytest.mark.parametrize("template", ["chat", "base", "vqa"])
@pytest.mark.parametrize("history", HISTORIES, ids=["h0", "h1", "h2"])
@pytest.mark.parametrize("with_image", [False, True])
def test_image_prompt_is_the_release(tok, template, history, with_image):
    cfg = get_config("full", "image", vision={"image_size": 1344})
    query = "What is written on the sign?"
    p = build_prompt(tok, query, int(with_image), cfg, history=history, template=template)
    ids, types = release_image(tok, query, history, with_image, template)
    assert p.input_ids.tolist() == ids
    assert p.token_type_ids.tolist() == types


def test_image_chat_prompt_has_no_frame_index(tok):
    """The issue's case: the image model writes nothing after its image (2306 + 1 + text)."""
    cfg = get_config("full", "image", vision={"image_size": 1344})
    p = build_prompt(tok, "Describe this image.", 1, cfg, template="chat")
    text = tok.encode("Question: Describe this image. Answer:")
    assert len(p) == 1 + 2306 + len(text)
    assert p.input_ids[2307:].tolist() == text


def test_history_is_checked():
    with pytest.raises(ValueError, match="history"):
        prompt_text("chat", "q", [("only one",)])
    with pytest.raises(ValueError, match="history"):
        prompt_text("chat", "q", "not a list")
    with pytest.raises(ValueError, match="template"):
        prompt_text("chat_old", "q")


def test_resolve_template_follows_the_demos_and_warns():
    caption_like = get_config("full", "video-chat", template="base", name="cogvlm2-video-hf")
    # a release video config that says "base": the demos run chat, unless it is the base release
    t, policy, warning = resolve_template(caption_like, release="THUDM/cogvlm2-llama3-caption")
    assert (t, policy) == ("chat", "chat") and "differs" in warning
    assert default_template(caption_like, "THUDM/cogvlm2-video-llama3-base") == "base"
    # an explicit choice wins; the sampling follows it
    t, policy, warning = resolve_template(caption_like, "base")
    assert (t, policy, warning) == ("base", "base", None)
    assert resolve_template(caption_like, "vqa")[:2] == ("vqa", "chat")
    image = get_config("full", "image")
    assert resolve_template(image) == ("chat", "image", None)
    with pytest.raises(ValueError, match="template"):
        resolve_template(image, "chat_old")
