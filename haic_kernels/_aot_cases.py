"""The table of Triton kernels that `haic_kernels._aot_check` compiles ahead of time.

One `Case` is one compilation: a kernel (the plain ``JITFunction`` under any autotune/heuristics
wrapper), its argument types, its constexprs and the launch options (num_warps, num_stages), for
the full-size CogVLM2 problem (MODEL_SPEC.md) in each dtype the op accepts. Autotuned kernels get
one case per autotune config, so a config that breaks tl.dot's layout rules or overflows shared
memory on the real compiler is caught before it reaches a GPU.

Importing this module imports the kernels' modules: TRITON_INTERPRET must be unset, because the
decorators (and the ``_configs()`` choice between interpreter and GPU autotune sets) read it at
import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Triton pointer / scalar type names for the dtypes the ops take.
PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
FLOATS = ("bf16", "fp16", "fp32")
HALVES = ("bf16", "fp16")


@dataclass(frozen=True)
class Case:
    """One ahead-of-time compilation of one kernel."""

    op: str  # the op folder, e.g. "attention"
    kernel: str  # the kernel's attribute name in ops/<op>/triton.py
    variant: str  # human-readable: dtype, config, shape
    signature: dict[str, str]  # every argument -> Triton type ("constexpr" for constexprs)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3  # Triton's default; the launchers without autotune pass none
    # Where the case is run in the quick (test) mode: False = only with --full.
    quick: bool = True
    # Autotuned kernels: the variant without the config. The autotuner skips a config whose
    # launch raises OutOfResources, so one config over the shared-memory limit is tolerated as
    # long as another of its group fits ("" = not autotuned: the launch would fail).
    group: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}.{self.kernel}[{self.variant}]"


def _jit(op: str, kernel: str):
    """The plain JITFunction of ``ops/<op>/triton.py::<kernel>`` (through autotune/heuristics)."""
    import importlib

    mod = importlib.import_module(f"haic_kernels.ops.{op}.triton")
    from triton.runtime.jit import JITFunction

    fn = getattr(mod, kernel)
    while not isinstance(fn, JITFunction):  # Autotuner / Heuristics keep the wrapped one in .fn
        fn = fn.fn
    return fn


def _configs(op: str, name: str = "_GPU_CONFIGS") -> list:
    import importlib

    return list(getattr(importlib.import_module(f"haic_kernels.ops.{op}.triton"), name))


def signature(op: str, kernel: str, types: dict[str, str], consts: dict[str, Any]) -> dict:
    """Full signature: ``types`` for the named args, constexpr for ``consts``, i32 otherwise."""
    fn = _jit(op, kernel)
    unknown = (set(types) | set(consts)) - set(fn.arg_names)
    if unknown:
        raise KeyError(f"{op}.{kernel}: no arguments {sorted(unknown)}")
    return {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}


def _case(op, kernel, variant, types, consts, *, warps=4, stages=3, quick=True, cfg=None) -> Case:
    """One case; with ``cfg`` (an autotune config) its label ends the variant, and its
    constexprs and launch options are applied."""
    group = ""
    if cfg is not None:
        group = f"{op}.{kernel}[{variant}]"
        blocks = "x".join(str(v) for v in cfg.kwargs.values())
        variant = f"{variant},{blocks},w{cfg.num_warps},s{cfg.num_stages}"
        consts = {**consts, **cfg.kwargs}
        warps, stages = cfg.num_warps, cfg.num_stages
    sig = signature(op, kernel, types, consts)
    return Case(op, kernel, variant, sig, dict(consts), warps, stages, quick, group)


# ---- per-op builders --------------------------------------------------------------------------


def patchify_cases() -> Iterator[Case]:
    from haic_kernels.ops.patchify import triton as m

    for dt in FLOATS:
        types = {"frames_ptr": "*u8", "out_ptr": PTR[dt]}
        types.update({f"{s}{c}": "fp32" for s in ("scale", "shift") for c in range(3)})
        consts = {"PATCH": 14, "BLOCK_ROWS": m._BLOCK_ROWS, "BLOCK_K": m._BLOCK_K}
        yield _case("patchify", "_patchify_fwd_kernel", dt, types, consts, warps=m._NUM_WARPS)


def patch_embed_cases() -> Iterator[Case]:
    for dt in FLOATS:
        for n, cfg in enumerate(_configs("patch_embed")):
            for uint8 in (True, False):
                types = {"x_ptr": "*u8" if uint8 else PTR[dt]}
                types.update({p: PTR[dt] for p in ("w_ptr", "bias_ptr", "cls_ptr", "pos_ptr")})
                types["out_ptr"] = PTR[dt]
                types.update({f"{s}{c}": "fp32" for s in ("scale", "shift") for c in range(3)})
                consts = dict(PATCH=14, NORMALIZE=uint8, HAS_BIAS=True, IEEE_FP32=dt == "fp32")
                frames = "u8" if uint8 else "float"
                yield _case(
                    "patch_embed", "_patch_embed_fwd_kernel", f"{dt},{frames} frames", types,
                    consts, cfg=cfg,
                    # quick: every config in bf16 from uint8 frames (the video path), the config
                    # with the smallest tiles for the other dtypes / float frames (fits sm_80)
                    quick=(dt == "bf16" and uint8) or n == 4,
                )  # fmt: skip


def conv_compress_cases() -> Iterator[Case]:
    for dt in FLOATS:
        for n, cfg in enumerate(_configs("conv_compress")):
            types = {p: PTR[dt] for p in ("x_ptr", "w_ptr", "bias_ptr", "out_ptr")}
            consts = dict(HAS_BIAS=True, IEEE_FP32=dt == "fp32")
            yield _case(
                "conv_compress", "_conv_compress_fwd_kernel", dt, types, consts, cfg=cfg,
                quick=dt == "bf16" or n == 5,  # + the smallest tiles in fp16 / fp32
            )  # fmt: skip


def expert_linear_cases() -> Iterator[Case]:
    for dt in FLOATS:
        for n, cfg in enumerate(_configs("expert_linear")):
            types = {p: PTR[dt] for p in ("x_ptr", "w_ptr", "b_ptr", "out_ptr")}
            types.update(perm_ptr="*i32", offsets_ptr="*i32")
            # CogVLM2: 2 experts (vision / language), no biases in the LM; K = 4096 or 14336,
            # both multiples of every BLOCK_K, so the launcher's heuristic sets EVEN_K.
            for bias_mask, even_k in ((0, True), (1, False)):
                consts = dict(E=2, BIAS_MASK=bias_mask, IEEE=dt == "fp32", EVEN_K=even_k)
                yield _case(
                    "expert_linear", "_expert_linear_kernel",
                    f"{dt},bias={bias_mask},even_k={even_k}", types, consts, cfg=cfg,
                    # + a mid-size config in fp16 / fp32 (one that fits sm_80's shared memory)
                    quick=even_k and (dt == "bf16" or n == 4),
                )  # fmt: skip


def rope_cases() -> Iterator[Case]:
    from haic_kernels.ops.rope import triton as m

    for dt in FLOATS:
        for interleaved in (False, True):
            # rope_precision="release" (low-precision angles) is the model's rotate-half path
            for release in (False, True) if dt != "fp32" and not interleaved else (False,):
                ptrs = ("x_ptr", "out0_ptr", "out1_ptr", "out2_ptr")
                types = {p: PTR[dt] for p in ptrs}
                types.update(pos_ptr="*i64", inv_freq_ptr="*fp32")
                # Llama-3-8B QKV: 32 q heads, 8 k, 8 v of D=128 -> HALF 64, H_P2 32.
                consts = dict(
                    HALF=64, HALF_P2=64, H_P2=32, ROT0=True, ROT1=True, ROT2=False,
                    ROUND=dt != "fp32", INTERLEAVED=interleaved, RELEASE=release,
                )  # fmt: skip
                yield _case(
                    "rope", "_rope_fwd_kernel",
                    f"{dt},interleaved={interleaved},release={release}", types, consts,
                    warps=m._NUM_WARPS, quick=not interleaved or dt == "bf16",
                )  # fmt: skip


def token_prune_cases() -> Iterator[Case]:
    from haic_kernels.ops.token_prune import triton as m

    w = m._NUM_WARPS
    for dt in FLOATS:
        types = {"x_ptr": PTR[dt], "prev_ptr": "*i32", "out_ptr": "*fp32", "first_score": "fp32"}
        consts = dict(BLOCK_N=m._COS_BLOCK_N, BLOCK_D=m._COS_BLOCK_D)
        yield _case("token_prune", "_frame_cosine_kernel", dt, types, consts, warps=w)
        # N = 64 tokens per adapter frame, 256 per vision-tower frame (BLOCK_N = next pow2).
        for n_tok in (64, 256):
            types = {"x_ptr": PTR[dt], "keep_ptr": "*i8", "out_ptr": "*i32"}
            consts = dict(BLOCK_N=n_tok, BLOCK_D=m._NK_BLOCK_D, IEEE=dt == "fp32")
            # fp32 at N=256: a 256x256 fp32 Gram tile in 4 warps takes ptxas ~130 s: --full only.
            yield _case("token_prune", "_nearest_kept_kernel", f"{dt},N={n_tok}", types, consts,
                        warps=w, quick=not (dt == "fp32" and n_tok == 256))  # fmt: skip
            types = {"x_ptr": PTR[dt], "target_ptr": "*i32", "sizes_ptr": "*fp32",
                     "out_ptr": PTR[dt], "new_sizes_ptr": "*fp32"}  # fmt: skip
            consts = dict(BLOCK_N=n_tok, BLOCK_D=m._MERGE_BLOCK_D)
            yield _case("token_prune", "_merge_weighted_kernel", f"{dt},N={n_tok}", types,
                        consts, warps=w)  # fmt: skip
    types = {"scores_ptr": "*fp32", "cu_ptr": "*i32", "k_ptr": "*i32", "keep_ptr": "*i8"}
    consts = dict(BLOCK_I=m._TOPK_BLOCK_I, BLOCK_J=m._TOPK_BLOCK_J)
    yield _case("token_prune", "_segment_topk_kernel", "fp32", types, consts, warps=w)
    for word in ("i32", "u8"):  # the launcher moves rows as int32 words, or bytes
        types = {"x_ptr": f"*{word}", "idx_ptr": "*i64", "out_ptr": f"*{word}"}
        consts = dict(BLOCK_W=m._GATHER_BLOCK_W)
        yield _case("token_prune", "_gather_rows_kernel", word, types, consts, warps=w)


def token_merge_cases() -> Iterator[Case]:
    from haic_kernels.ops.token_merge import triton as m

    w = m._NUM_WARPS
    # The metric is the vision keys' head mean in fp32 (D = 112 -> BLOCK_D 128).
    types = {"m_ptr": "*fp32", "cu_ptr": "*i32", "best_ptr": "*fp32", "match_ptr": "*i64"}
    consts = dict(BLOCK_A=m._MATCH_BLOCK_A, BLOCK_B=m._MATCH_BLOCK_B, BLOCK_D=128)
    yield _case("token_merge", "_match_kernel", "fp32,D=112", types, consts, warps=w)
    types = {"best_ptr": "*fp32", "match_ptr": "*i64", "cu_ptr": "*i32", "r_ptr": "*i32",
             "target_ptr": "*i64"}  # fmt: skip
    yield _case("token_merge", "_rank_kernel", "fp32", types, dict(BLOCK=m._RANK_BLOCK), warps=w)
    for dt in FLOATS:
        types = {"x_ptr": PTR[dt], "sizes_ptr": "*fp32", "stay_ptr": "*i64", "start_ptr": "*i64",
                 "count_ptr": "*i64", "order_ptr": "*i64", "out_ptr": PTR[dt],
                 "new_sizes_ptr": "*fp32"}  # fmt: skip
        consts = dict(BLOCK_D=m._MERGE_BLOCK_D)
        yield _case("token_merge", "_merge_kernel", dt, types, consts, warps=w)


def attention_cases() -> Iterator[Case]:
    from haic_kernels.ops.attention import triton as m

    for dt in FLOATS:
        prec = "ieee" if dt == "fp32" else "tf32"
        for d in (64, 112, 128):
            block_d = max(16, 1 << (d - 1).bit_length())
            ptrs = {p: PTR[dt] for p in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}
            ptrs.update(lse_ptr="*fp32", cu_q_ptr="*i32", cu_k_ptr="*i32", ids_ptr="*i32",
                        bias_ptr="*fp32")  # fmt: skip
            ptrs["qk_scale"] = "fp32"
            # The language model's mask (packed, causal + frame block ids, LSE kept): the most
            # code; the vision tower's plain packed non-causal mask for D=112, with ToMe's
            # per-key bias (log size; the tower without merging runs the same kernel without).
            flags = dict(CAUSAL=True, HAS_IDS=True, VARLEN=True, STORE_LSE=True, HAS_BIAS=False)
            if d == 112:
                flags = dict(CAUSAL=False, HAS_IDS=False, VARLEN=True, STORE_LSE=False,
                             HAS_BIAS=True)  # fmt: skip
            base = dict(BLOCK_D=block_d, PRECISION=prec, **flags)
            for cfg in m._GPU_CONFIGS:
                yield _case(
                    "attention", "_attn_fwd_kernel", f"{dt},D={d}", ptrs, base, cfg=cfg,
                    # fp32 tiles take ptxas 12-40 s each (and exceed sm_80's shared memory):
                    # --full only.
                    quick=dt == "bf16" or (dt == "fp16" and d == 128),
                )  # fmt: skip
            # Decode-like calls (<= 16 query rows): the launcher's fixed small tile.
            consts = {**base, "BLOCK_M": m._DECODE_BLOCK_M, "BLOCK_N": 64}
            yield _case("attention", "_attn_fwd_kernel", f"{dt},D={d},decode 16x64,w4", ptrs,
                        consts, warps=4, quick=dt == "bf16" or d == 128)  # fmt: skip
            sptrs = {p: PTR[dt] for p in ("q_ptr", "k_ptr")}
            sptrs.update(lse_ptr="*fp32", sel_ptr="*u8", part_ptr="*fp32", cu_q_ptr="*i32",
                         cu_k_ptr="*i32", ids_ptr="*i32", bias_ptr="*fp32",
                         qk_scale="fp32")  # fmt: skip
            consts = dict(
                BLOCK_M=m._SCORES_BLOCK_M, BLOCK_N=m._SCORES_BLOCK_N, BLOCK_D=block_d,
                PRECISION=prec, **{k: v for k, v in flags.items() if k != "STORE_LSE"},
            )  # fmt: skip
            yield _case("attention", "_key_scores_kernel", f"{dt},D={d}", sptrs, consts,
                        warps=4, quick=dt == "bf16" or d == 128)  # fmt: skip


BUILDERS: dict[str, Callable[[], Iterator[Case]]] = {
    "patchify": patchify_cases,
    "patch_embed": patch_embed_cases,
    "conv_compress": conv_compress_cases,
    "expert_linear": expert_linear_cases,
    "rope": rope_cases,
    "token_prune": token_prune_cases,
    "token_merge": token_merge_cases,
    "attention": attention_cases,
}


def all_cases() -> list[Case]:
    return [c for build in BUILDERS.values() for c in build()]
