"""Which template a run uses, the text it wraps a question in, and the frames it samples.

The release has three templates (its ``_history_to_prompt``), restated::

    base:  "{q}"                                            (history ignored)
    chat:  "Question: {q1} Answer: {a1}\\n" ... "Question: {q} Answer:"
    vqa:   "Question: {q1} Short answer: {a1}\\n" ... "Question: {q} Short answer:"

A checkpoint's ``config.json`` names one (``template_version``), but that is not how the
releases are run: the official video demo (``video_demo/cli_video_demo.py``) passes ``"chat"``
for every video model except ``cogvlm2-video-llama3-base`` (``"base"``), the CogVideoX captioning
script runs ``cogvlm2-llama3-caption`` with ``"chat"``, and the image demo
(``basic_demo/cli_demo.py``) passes ``"chat"``; the public config.json of the caption model says
``"base"``. `resolve_template` follows the demos and says when that differs from the file.

The frame sampling follows the template (the video demo's ``load_video(strategy=...)``): chat
takes one frame per second, base 24 frames spread over the first 60 s. The demo's loader knows
no ``"vqa"`` strategy; vqa uses chat's (an assumption, see `SAMPLING_POLICY`). The image model
takes one image and samples nothing (policy ``"image"``).

`resolve_template` is what the app layer calls (``--template``); prompt.py builds the ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import TEMPLATES, CogVLM2Config

#: Frame-sampling policy (video/sampling.py) per template, for the video models. "vqa" -> "chat":
#: assumed; the release's video loader only has "chat" and "base".
SAMPLING_POLICY: dict[str, str] = {"chat": "chat", "base": "base", "vqa": "chat"}
#: The policy name for the image model: one image, no frame sampling.
IMAGE_POLICY = "image"
_ANSWER = {"chat": "Answer:", "vqa": "Short answer:"}


def check_template(template: object) -> str:
    """``template`` if it is one of `TEMPLATES`, else ValueError naming it."""
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return template  # type: ignore[return-value]


def check_history(history: object) -> list[tuple[str, str]]:
    """Earlier turns as the release takes them: a sequence of (query, response) string pairs."""
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise ValueError(f"history must be a sequence of (query, response) pairs, got {history!r}")
    out = []
    for i, turn in enumerate(history):
        ok = isinstance(turn, (tuple, list)) and len(turn) == 2
        if not ok or not all(isinstance(s, str) for s in turn):
            raise ValueError(f"history[{i}] must be a (query, response) pair of str, got {turn!r}")
        out.append((turn[0], turn[1]))
    return out


def prompt_text(template: str, query: str, history: Sequence[tuple[str, str]] | None = None) -> str:
    """The text the release tokenizes after the frames (see this module's docstring)."""
    check_template(template)
    if not isinstance(query, str):
        raise ValueError(f"query must be a str, got {type(query).__name__}")
    turns = check_history(history)
    if template == "base":
        return query
    answer = _ANSWER[template]
    past = "".join(f"Question: {q} {answer} {a}\n" for q, a in turns)
    return f"{past}Question: {query} {answer}"


def default_template(config: CogVLM2Config, release: str | None = None) -> str:
    """The template the official demos use for this model.

    ``release``: the checkpoint's repo id or directory name, if known. The video base model
    (``cogvlm2-video-llama3-base``; also our ``video-base`` presets) runs "base"; every other
    release, image or video, runs "chat".
    """
    names = [config.name, release or ""]
    if not config.vision_expert and any(
        "video-llama3-base" in n or "video-base" in n for n in names
    ):
        return "base"
    return "chat"


def resolve_template(
    config: CogVLM2Config, requested: str | None = None, *, release: str | None = None
) -> tuple[str, str, str | None]:
    """(template, sampling policy name, warning or None) for a run of ``config``'s model.

    ``requested``: the user's choice (``--template``), or None for `default_template`. The
    warning (for the caller to show) says when the chosen template differs from the config's
    ``template_version``, and which one the demos use. The policy is a `video.sampling` policy
    name, or ``"image"`` for the image model (a single image: no frame sampling).
    """
    template = default_template(config, release) if requested is None else requested
    check_template(template)
    policy = IMAGE_POLICY if config.vision_expert else SAMPLING_POLICY[template]
    warning = None
    if template != config.template:
        how = "chosen" if requested is not None else "the official demos' choice"
        warning = (
            f"template {template!r} ({how}) differs from template_version {config.template!r} "
            f"in the config of {config.name}; frames are sampled with the {policy!r} policy"
        )
    return template, policy, warning
