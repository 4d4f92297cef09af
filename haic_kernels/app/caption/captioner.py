"""The two stages every engine runs: decode a group of entries, and caption decoded clips.

`JobSpec` is everything a job's stages need, as plain picklable values (a Ray actor gets one):
the model options of `common.add_model_arguments`, the template and the frame policy it
implies, the loader's options. `decode_entries` turns entries into `Clip` s with the video
loader (`VideoLoader`: a clip that cannot be read becomes a clip with an ``error``).
`Captioner` holds the model (loaded once) and turns clips into output rows:

    prompts      `build_prompt` per clip (the job's template), checked against the context
    one call     the fast model takes the group's rows as one ragged batch (`pad_prompts` +
                 ``lengths``) through the timed pipeline (`pipeline.answer`); the reference
                 model, which has no padding, one clip per call
    isolation    a call that raises is retried clip by clip; a clip that still fails becomes
                 an error row, never a failed job
    rows         tokens cut at the first stop id (``config.eos_token_ids``) and decoded; per-
                 row timings are the group's stage times divided by its size

Every row has the keys `store.ROW_FIELDS` (see the README's "Caption a dataset").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...models.cogvlm2 import build_prompt, pad_prompts, resolve_template
from ...video.loader import VideoBatch, VideoLoader
from ..common import (
    build_config,
    build_model,
    load_tokenizer,
    resolve_device_dtype,
    select_model,
)
from ..errors import usage_error
from ..pipeline import StageClock, answer, check_context
from .plan import Entry
from .store import ROW_FIELDS

__all__ = [
    "Captioner", "Clip", "JobSpec", "decode_batches", "decode_entries", "job_spec", "stage_key",
]  # fmt: skip

#: The `add_model_arguments` options a model stage needs to rebuild the model anywhere.
MODEL_OPTIONS = ("config", "variant", "checkpoint", "seed", "device", "dtype", "model", "backend")


@dataclass(frozen=True)
class JobSpec:
    """A caption job's set-up, resolved once by the driver (picklable: sent to Ray actors).

    ``model_options``: the `MODEL_OPTIONS` values; ``policy``/``num_frames``/``size``: the frame
    sampling of ``template`` for this model; ``decoder``: the loader's backend."""

    model_options: dict[str, Any]
    model_name: str
    template: str
    policy: str
    num_frames: int
    size: int
    preprocess: str
    decoder: str
    prompt: str
    max_new_tokens: int

    def settings(self) -> dict[str, Any]:
        """What decides an answer: recorded in the output's job.json, checked on resume."""
        opts = self.model_options
        return {
            "model": self.model_name,
            "checkpoint": None if opts["checkpoint"] is None else str(opts["checkpoint"]),
            "seed": opts["seed"] if opts["checkpoint"] is None else None,
            "template": self.template,
            "frames": {"policy": self.policy, "max": self.num_frames, "size": self.size},
            "preprocess": self.preprocess,
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
        }

    def loader(
        self, entries: Sequence[Entry], *, device: str | torch.device,
        batch_size: int | None = None, num_workers: int | None = None,
    ) -> VideoLoader:  # fmt: skip
        """A `VideoLoader` over ``entries`` with this job's frame options (``batch_size``
        default: all of them in one batch). Raises what `VideoLoader` raises (ValueError,
        ImportError for a decoder that is not installed)."""
        return VideoLoader(
            [e.record for e in entries], policy=self.policy, num_frames=self.num_frames,
            size=self.size, batch_size=batch_size or max(1, len(entries)), device=device,
            backend=self.decoder, num_workers=num_workers, preprocess=self.preprocess,
        )  # fmt: skip


def job_spec(args: argparse.Namespace) -> tuple[JobSpec, str | None]:
    """The `JobSpec` of ``haic caption``'s options and the template warning (or None).
    Reads only the checkpoint's config; raises `CommandError` (status 2) for options a user
    must fix."""
    if args.max_new_tokens < 1:
        raise usage_error("--max-new-tokens must be at least 1")
    device, _ = resolve_device_dtype(args)
    if args.engine == "ray" and args.device == "auto":
        device = torch.device("cuda")  # the model actors' GPUs, not this driver's
    config = build_config(args, device)
    if config.vision_expert:
        raise usage_error(
            f"{config.name} is the image model (one image per prompt); "
            "captioning takes a video model (--variant video-chat / video-base)"
        )
    release = None if args.checkpoint is None else Path(args.checkpoint).name
    try:
        template, policy, warning = resolve_template(config, args.template, release=release)
    except ValueError as e:
        raise usage_error(f"--template: {e}") from e
    options = {k: getattr(args, k) for k in MODEL_OPTIONS}
    spec = JobSpec(options, config.name, template, policy, config.max_frames,
                   config.vision.image_size, args.preprocess, args.decoder, args.prompt,
                   args.max_new_tokens)  # fmt: skip
    return spec, warning


@dataclass
class Clip:
    """An entry after decoding: ``frames`` (uint8 [F, S, S, 3], or float32 [F, 3, S, S] for
    ``preprocess="release"``) with their ``indices``/``timestamps``, or the ``error``."""

    entry: Entry
    frames: torch.Tensor | None = None
    indices: tuple[int, ...] = ()
    timestamps: tuple[float, ...] = ()
    decoder: str | None = None
    error: str | None = None
    decode_ms: float = 0.0


def _clips(batch: VideoBatch, entries: Sequence[Entry], decode_ms: float) -> list[Clip]:
    by_record = {id(e.record): e for e in entries}
    each = decode_ms / max(1, len(batch) + len(batch.errors))  # the loader times whole batches
    clips = [
        Clip(by_record[id(rec)], batch.video(b), tuple(batch.indices[b]),
             tuple(batch.timestamps[b]), batch.backends[b], decode_ms=each)
        for b, rec in enumerate(batch.records)
    ]  # fmt: skip
    clips += [Clip(by_record[id(err.record)], error=err.reason, decode_ms=each)
              for err in batch.errors]  # fmt: skip
    return sorted(clips, key=lambda c: c.entry.pos)


def decode_batches(
    spec: JobSpec, entries: Sequence[Entry], *, batch_size: int,
    device: str | torch.device = "cpu", num_workers: int | None = None,
) -> Iterator[list[Clip]]:  # fmt: skip
    """Decode ``entries`` ``batch_size`` at a time with one loader (so one DALI pipeline on a
    GPU): each batch's clips, one per entry, in manifest order."""
    batches = iter(spec.loader(entries, device=device, batch_size=batch_size,
                               num_workers=num_workers))  # fmt: skip
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        yield _clips(batch, entries, (time.perf_counter() - t0) * 1e3)


def decode_entries(
    spec: JobSpec, entries: Sequence[Entry], *, device: str | torch.device = "cpu",
    num_workers: int | None = None,
) -> list[Clip]:  # fmt: skip
    """Decode ``entries`` as one loader batch: one `Clip` each, in manifest order."""
    return next(decode_batches(spec, entries, batch_size=max(1, len(entries)), device=device,
                               num_workers=num_workers), [])  # fmt: skip


def stage_key(name: str) -> str:
    """A `StageClock` stage name as a timing key: "compress + adapter" -> "compress_adapter"."""
    return name.replace(" + ", "_").replace(" ", "_")


def _cut_at_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    """``ids`` up to (not including) the first stop id: finished rows are padded with one."""
    for k, t in enumerate(ids):
        if t in stops:
            return ids[:k]
    return ids


@dataclass
class Captioner:
    """The model stage: ``captioner(clips) -> rows`` (one per clip, same order). Build it with
    `Captioner.load` (the model is loaded once; reuse the object for every batch)."""

    spec: JobSpec
    model: torch.nn.Module
    kind: str  # "fast" | "reference"
    tokenizer: Any
    config: Any
    device: torch.device
    clock: StageClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = StageClock(self.device)  # every batch's stages, summed (the accounting)

    @classmethod
    def load(cls, spec: JobSpec, *, device: str | None = None) -> Captioner:
        """Build the model of ``spec`` (``device`` overrides its ``--device``). ``--model
        auto`` is the fast model here on every device: ragged batches need it."""
        opts = dict(spec.model_options)
        if device is not None:
            opts["device"] = device
        if opts["model"] == "auto":
            opts["model"] = "fast"
        args = argparse.Namespace(**opts)
        dev, dtype = resolve_device_dtype(args)
        config = build_config(args, dev)
        tokenizer = load_tokenizer(args.checkpoint, config)
        reference, _ = build_model(args, config, dev, dtype)
        model, kind = select_model(args, reference, dev)
        return cls(spec, model, kind, tokenizer, config, dev)

    def __call__(self, clips: Sequence[Clip]) -> list[dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        ready = []
        for c in clips:
            if c.error is not None:
                rows[c.entry.pos] = self.error_row(c, c.error)
                continue
            try:
                prompt = build_prompt(self.tokenizer, self._question(c), int(c.frames.shape[0]),
                                      self.config, template=self.spec.template)  # fmt: skip
                check_context(prompt, self.config, self.spec.max_new_tokens)
            except ValueError as e:  # e.g. a prompt longer than the context
                rows[c.entry.pos] = self.error_row(c, str(e))
                continue
            ready.append((c, prompt))
        groups = [ready] if self.kind == "fast" else [[r] for r in ready]
        for group in filter(None, groups):
            for c, row in self._answer_isolated(group):
                rows[c.entry.pos] = row
        return [rows[c.entry.pos] for c in clips]

    def _question(self, c: Clip) -> str:
        return c.entry.record.question or self.spec.prompt

    def _answer_isolated(self, group):
        try:
            return self._answer(group)
        except (RuntimeError, ValueError) as e:
            if len(group) == 1:
                c = group[0][0]
                return [(c, self.error_row(c, f"the model failed: {type(e).__name__}: {e}"))]
        return [pair for item in group for pair in self._answer_isolated([item])]

    def _answer(self, group) -> list[tuple[Clip, dict[str, Any]]]:
        clock = StageClock(self.device)
        t0 = time.perf_counter()
        frames = torch.cat([c.frames for c, _ in group]).to(self.device)
        ids, types, lengths = (t.to(self.device) for t in pad_prompts([p for _, p in group]))
        options = {"lengths": lengths} if self.kind == "fast" else {}
        result = answer(self.model, frames, ids, types, clock=clock,
                        max_new_tokens=self.spec.max_new_tokens,
                        eos_token_id=list(self.config.eos_token_ids), **options)  # fmt: skip
        tokens = result.tokens.tolist()
        model_ms = (time.perf_counter() - t0) * 1e3
        for name, ms in clock.ms.items():
            self.clock.add(name, ms)
        n = len(group)
        share = {stage_key(k): round(v / n, 3) for k, v in clock.ms.items()}
        out = []
        for (c, _), toks in zip(group, tokens):
            toks = _cut_at_stop(toks, self.config.eos_token_ids)
            timings = {"decode": round(c.decode_ms, 3), "model": round(model_ms / n, 3),
                       **share, "batch_size": n}  # fmt: skip
            out.append((c, self._row(c, answer=self.tokenizer.decode(toks), token_ids=toks,
                                     num_frames=len(c.indices), frame_indices=list(c.indices),
                                     timestamps=[round(t, 6) for t in c.timestamps],
                                     decoder=c.decoder, timings_ms=timings)))  # fmt: skip
        return out

    def error_row(self, c: Clip, reason: str) -> dict[str, Any]:
        return self._row(c, error=reason, decoder=c.decoder,
                         timings_ms={"decode": round(c.decode_ms, 3)})  # fmt: skip

    def _row(self, c: Clip, **fields: Any) -> dict[str, Any]:
        rec = c.entry.record
        row = dict.fromkeys(ROW_FIELDS)
        row.update(id=c.entry.id, path=rec.path, question=self._question(c),
                   model=self.spec.model_name, implementation=self.kind,
                   template=self.spec.template, manifest=rec.to_dict())  # fmt: skip
        row.update(fields)
        return row
