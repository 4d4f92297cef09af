"""End-to-end benchmark: video file in, tokens out, fast model vs reference in one run.

Issue 6's setting (``size="full"``): the full-size video-chat config with seeded random weights
in bf16, one 1-minute 720p H.264 clip (written once with `video.synthetic.write_clip` into a
temp dir) decoded for each of a batch of 8, 24 frames per video (the chat policy's one per
second). Both models share one set of weights (`FastCogVLM2.from_reference`), so weights count
once in both peaks. The reference is `CogVLM2ForCausalLM` in eager PyTorch with SDPA attention.

Per model and repetition (after warm-up), through the pipeline `haic run` uses
(`pipeline.answer`, one `StageClock`): decode of the file (`VideoLoader`: DALI on a GPU),
patch embed, vision tower, compress + adapter, prefill, then greedy decode of
``new_tokens`` tokens; each stage synchronized. Reported (medians over repetitions):

* time to first token = decode + patch embed + vision tower + compress/adapter + prefill;
* decode tokens/s = batch * decode steps / decode time; per-step time;
* decode bandwidth fraction = (LM weight bytes + KV-cache bytes read per step) / measured copy
  bandwidth (`roofline.measure_peaks`) / step time: 1.0 is the memory-bandwidth limit;
* peak memory (torch.cuda.max_memory_allocated) over the whole pass.

Rows follow `bench.results` (suite "e2e"; cases "time to first token", "decode step" and one
"stage: ..." per stage), with ``speedup_vs_reference`` and extra keys (``tokens_per_s``,
``peak_mem_bytes``, ``batch``, ``frames``...). ``size="tiny"`` is the CI smoke test: the tiny
config in fp32 on the CPU, a 4 s clip, batch 2, seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..bench.env import collect_env, trust_fast_paths
from ..bench.model_calls import build_reference
from ..bench.results import add_speedups, to_document, write_json
from ..bench.roofline import measure_peaks
from ..models.cogvlm2 import (
    ByteTokenizer,
    FastCogVLM2,
    build_prompt,
    get_config,
    init_random_weights,
    stack_prompts,
)
from ..testing.reduction_report import ReductionRow, format_reduction, reduction_report
from ..video.loader import VideoLoader
from ..video.synthetic import write_clip
from .parity import reduce_option
from .pipeline import StageClock, answer

SUITE = "e2e"
SIZES = {
    # config size, dtype, batch, frames, new tokens, clip (seconds, fps, width, height, codec)
    "full": dict(size="full", dtype=torch.bfloat16, batch=8, frames=24, new_tokens=64,
                 clip=(60, 30, 1280, 720, "libx264")),
    "tiny": dict(size="tiny", dtype=torch.float32, batch=2, frames=4, new_tokens=3,
                 clip=(4, 4, 128, 96, "libvpx-vp9")),
}  # fmt: skip
REFERENCE = "reference (eager, SDPA)"
FAST = "fast"


def make_clip(folder: Path, seconds: int, fps: int, width: int, height: int, codec: str) -> Path:
    """The benchmark clip (cached in ``folder`` by its parameters)."""
    ext = "mp4" if codec == "libx264" else "webm"
    path = folder / f"e2e_{seconds}s_{fps}fps_{width}x{height}_{codec}.{ext}"
    if not path.exists():
        opts = {"preset": "ultrafast"} if codec == "libx264" else {"cpu-used": "8"}
        write_clip(path.with_suffix(".part." + ext), seconds * fps, fps=fps, width=width,
                   height=height, codec=codec, options=opts)  # fmt: skip
        path.with_suffix(".part." + ext).rename(path)
    return path


def lm_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights every decode step reads: decoder layers, final norm, lm_head (the
    embedding table is gathered, B rows; the vision tower does not run)."""
    parts = [model.model.layers, model.model.norm, model.lm_head]
    return sum(p.numel() * p.element_size() for m in parts for p in m.parameters())


def kv_bytes(config, batch: int, context: float, elem: int) -> float:
    t = config.text
    return batch * t.num_layers * 2 * t.num_kv_heads * t.head_dim * context * elem


def decode_clip(clip: Path, config, spec: dict[str, Any], device: torch.device):
    """``spec["batch"]`` copies of ``clip`` through `VideoLoader` (DALI on a GPU): the batch, its
    ``frames`` uint8 [B, F, H, W, 3]; RuntimeError if decoding failed."""
    loader = VideoLoader([str(clip)] * spec["batch"], policy=config.template,
                         num_frames=spec["frames"], size=config.vision.image_size,
                         batch_size=spec["batch"], device=device)  # fmt: skip
    batch = next(iter(loader))
    if batch.errors:
        raise RuntimeError(f"decoding {clip} failed: {batch.errors[0].reason}")
    return batch


def _one_pass(model, config, clip, spec, device, tokenizer, prune=None) -> dict[str, Any]:
    clock = StageClock(device)
    with clock.stage("decode video"):
        batch = decode_clip(clip, config, spec, device)
    b, f = batch.frames.shape[:2]
    prompts = [build_prompt(tokenizer, "Describe this video.", f, config) for _ in range(b)]
    ids, types = (t.to(device) for t in stack_prompts(prompts))
    frames = batch.frames.reshape(b * f, *batch.frames.shape[2:])
    opts = {} if prune is None else {"prune": prune}
    res = answer(model, frames, ids, types, max_new_tokens=spec["new_tokens"], eos_token_id=None,
                 clock=clock, **opts)  # fmt: skip
    return {"ms": dict(clock.ms), "steps": res.decode_steps, "peak": res.peak_mem_bytes,
            "batch": b, "frames": f, "prompt_len": ids.shape[1],
            "inputs": (ids, types, frames)}  # fmt: skip


def _row(case, backend, baseline, spec, dtype, ms, n, *, suite=SUITE, **extra) -> dict[str, Any]:
    return {
        "suite": suite, "case": case, "backend": backend, "baseline": baseline,
        "shapes": {"batch": spec["batch"], "frames": spec["frames"]},
        "dtype": str(dtype).removeprefix("torch."), "flops": 0, "bytes": extra.pop("bytes", 0),
        "median_ms": ms, "p20_ms": None, "p80_ms": None, "min_ms": None, "n": n,
        "clock": "wall_sync", "input_sets": 1, "cuda_graph": extra.pop("cuda_graph", False),
        "tflops": None, "gbps": extra.pop("gbps", None),
        "frac_peak_gbps": extra.pop("frac", None), "frac_peak_tflops": None, **extra,
    }  # fmt: skip


def random_reference(config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`build_reference` with seeded random weights (`init_random_weights`, drawn on the host)."""
    return init_random_weights(build_reference(config, device, dtype), seed=0).eval()


def prepare(size: str, sizes: dict[str, dict[str, Any]], device, clip_dir):
    """(spec, device, video-chat config, clip path) for ``size``: the set-up both end-to-end
    benchmarks share. ``device`` None means CUDA when there is one."""
    if size not in sizes:
        raise ValueError(f"size must be one of {tuple(sizes)}, got {size!r}")
    spec = sizes[size]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if size == "full" and device.type != "cuda":
        raise ValueError("size='full' needs a CUDA device")
    config = get_config(spec["size"], "video-chat", max_frames=spec["frames"])
    folder = Path(clip_dir or tempfile.gettempdir()) / "haic_e2e"
    folder.mkdir(parents=True, exist_ok=True)
    return spec, device, config, make_clip(folder, *spec["clip"])


def run_e2e(size: str = "tiny", device: str | torch.device | None = None, *, reps: int = 3,
            warmup: int = 1, clip_dir: str | Path | None = None, progress: bool = True,
            reduce: Sequence[tuple[str, object]] = ()) -> dict[str, Any]:  # fmt: skip
    """Run the benchmark; returns the results document (see `bench.results`). ``reduce``:
    (label, ``prune=`` option) pairs run on the fast model too ("fast + label" rows; their
    `reduction_report` on the first batch under the document's "reduction" key)."""
    spec, device, config, clip = prepare(size, SIZES, device, clip_dir)
    dtype = spec["dtype"]
    reference = random_reference(config, device, dtype)
    fast = FastCogVLM2.from_reference(reference).eval()
    peaks = measure_peaks(device)
    tokenizer = ByteTokenizer()  # random weights: byte ids are valid in either vocabulary
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    passes = [("reference", reference, REFERENCE, None), (FAST, fast, FAST, None)]
    passes += [(FAST, fast, f"{FAST} + {name}", prune) for name, prune in reduce]
    for kind, model, label, prune in passes:
        runs = []
        for i in range(warmup + reps):
            if progress:
                print(f"e2e {size}: {label} pass {i + 1}/{warmup + reps}", flush=True)
            r = _one_pass(model, config, clip, spec, device, tokenizer, prune)
            if i >= warmup:
                runs.append(r)
        med = {k: statistics.median(r["ms"][k] for r in runs) for k in runs[0]["ms"]}
        steps, b = runs[0]["steps"], runs[0]["batch"]
        peak = max((r["peak"] or 0) for r in runs) or None
        common = dict(peak_mem_bytes=peak, prompt_len=runs[0]["prompt_len"])
        base = kind == "reference"
        ttft = sum(med[k] for k in ("decode video", "patch embed", "vision tower",
                                     "compress + adapter", "prefill"))  # fmt: skip
        rows.append(_row("time to first token", label, base, spec, dtype, ttft, len(runs),
                         **common))  # fmt: skip
        step_ms = med["decode tokens"] / max(steps, 1)
        nbytes = lm_weight_bytes(reference) + kv_bytes(
            config, b, runs[0]["prompt_len"] + steps / 2, elem
        )
        gbps = nbytes / (step_ms * 1e-3) / 1e9 if steps else None
        frac = gbps / peaks.gbps if peaks and gbps else None
        rows.append(_row("decode step", label, base, spec, dtype, step_ms, len(runs),
                         bytes=int(nbytes), gbps=gbps, frac=frac,
                         cuda_graph=kind == FAST and device.type == "cuda",
                         tokens_per_s=b * steps / (med["decode tokens"] / 1e3) if steps else None,
                         decode_steps=steps, **common))  # fmt: skip
        for name, ms in med.items():
            rows.append(_row(f"stage: {name}", label, base, spec, dtype, ms, len(runs)))
        inputs = runs[0]["inputs"]
    add_speedups(rows)
    doc = to_document(rows, collect_env(device), peaks=peaks.to_dict() if peaks else None)
    if reduce:
        ids, types, frames = inputs
        report = reduction_report(fast, ids, types, frames, dict(reduce), max_new_tokens=4)
        doc["reduction"] = [r.to_dict() for r in report]
    return doc


def format_table(doc: dict[str, Any]) -> str:
    lines = [f"{'case':<28} {'backend':<24} {'ms':>10} {'speed-up':>9}  extra"]
    for r in doc["results"]:
        sp = r.get("speedup_vs_reference_eager_sdpa")
        extra = []
        if r.get("tokens_per_s"):
            extra.append(f"{r['tokens_per_s']:.1f} tok/s")
        if r.get("frac_peak_gbps") is not None:
            extra.append(f"{100 * r['frac_peak_gbps']:.0f}% of bandwidth")
        if r.get("peak_mem_bytes"):
            extra.append(f"peak {r['peak_mem_bytes'] / 2**30:.1f} GiB")
        lines.append(f"{r['case']:<28} {r['backend']:<24} {r['median_ms']:10.1f} "
                     f"{(f'{sp:.2f}x' if sp else '-'):>9}  {', '.join(extra)}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/e2e.py", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="default: full on CUDA")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clip-dir", type=Path, default=None, help="where the clip is cached")
    p.add_argument("--json", type=Path, default=None, help="write the results document here")
    p.add_argument("--reduce", action="append", type=reduce_option, default=[], metavar="SPEC",
                   help="also run the fast model with this vision-tower reduction (repeatable; "
                   "as haic parity --reduce)")  # fmt: skip
    args = p.parse_args(argv)
    size = args.size or ("full" if torch.cuda.is_available() else "tiny")
    with trust_fast_paths():
        doc = run_e2e(size, reps=args.reps, warmup=args.warmup, clip_dir=args.clip_dir,
                      reduce=args.reduce)  # fmt: skip
    print(format_table(doc))
    if doc.get("reduction"):
        print(format_reduction([ReductionRow(**r) for r in doc["reduction"]]))
    if args.json is not None:
        print(f"wrote {write_json(args.json, doc)}")
    return 0
