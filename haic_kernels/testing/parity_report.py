"""What `haic parity` reports: per-stage errors, per-prompt tokens, the table and the JSON.

`model_parity.compare` fills a `ParityResult`; `format_table` is what the command prints and
`write_json` what ``--json`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ParityResult", "PromptResult", "StageResult", "write_json"]


@dataclass
class StageResult:
    """One stage, worst case over the prompts. Relative errors are normwise:
    ``max|x - oracle| / max|oracle|`` and ``mean|x - oracle| / mean|oracle|``."""

    stage: str
    module: str
    shape: tuple[int, ...] | None
    fast_max_rel: float | None = None
    fast_mean_rel: float | None = None
    ref_max_rel: float | None = None
    ratio: float | None = None  # fast max|err| / bound: <= 1 passes
    ok: bool = True
    note: str = ""


@dataclass
class PromptResult:
    index: int
    source: str
    question: str
    frames: int
    tokens: int
    fast_ids: list[int]
    reference_ids: list[int]
    oracle_ids: list[int]

    @property
    def match(self) -> bool:
        return self.fast_ids in (self.reference_ids, self.oracle_ids)


@dataclass
class ParityResult:
    config: str
    dtype: str
    device: str
    backend: str
    oracle_dtype: str
    stages: list[StageResult] = field(default_factory=list)
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def failed_stages(self) -> list[str]:
        return [s.stage for s in self.stages if not s.ok]

    @property
    def tokens_ok(self) -> bool:
        return all(p.match for p in self.prompts)

    @property
    def ok(self) -> bool:
        return not self.failed_stages and self.tokens_ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for p, row in zip(self.prompts, d["prompts"], strict=True):
            row["match"] = p.match
        d.update(ok=self.ok, failed_stages=self.failed_stages, tokens_ok=self.tokens_ok)
        return d

    def format_table(self) -> str:
        """The report `haic parity` prints."""
        lines = [
            f"parity: {self.config}, fast {self.dtype} on {self.device} (backend {self.backend}) "
            f"vs reference {self.dtype} vs oracle {self.oracle_dtype}",
            f"  {'stage':<16} {'shape':<18} {'fast max rel':>12} {'fast mean rel':>13} "
            f"{'ref max rel':>11} {'err/bound':>9}  verdict",
        ]
        for s in self.stages:
            shape = "x".join(map(str, s.shape)) if s.shape else "-"
            if s.fast_max_rel is None:
                lines.append(f"  {s.stage:<16} {shape:<18} {'-':>12} {'-':>13} {'-':>11} "
                             f"{'-':>9}  {s.note}")  # fmt: skip
                continue
            lines.append(
                f"  {s.stage:<16} {shape:<18} {s.fast_max_rel:12.3e} {s.fast_mean_rel:13.3e} "
                f"{s.ref_max_rel:11.3e} {s.ratio:9.3f}  {'ok' if s.ok else 'FAIL'}"
                + (f" ({s.note})" if s.note else "")
            )
        lines.append("greedy tokens (fast must equal the reference's or the oracle's):")
        for p in self.prompts:
            verdict = "match" if p.match else "MISMATCH"
            lines.append(
                f"  prompt {p.index}: {p.source}, {p.frames} frames, {p.tokens} tokens, "
                f"{p.question!r}: fast {p.fast_ids} ref {p.reference_ids} "
                f"oracle {p.oracle_ids}  {verdict}"
            )
        n_match = sum(p.match for p in self.prompts)
        bad = self.failed_stages
        lines.append(
            f"result: {'PASS' if self.ok else 'FAIL'} - "
            f"{len(self.stages) - len(bad)}/{len(self.stages)} stages within the rule "
            f"(fast err <= 2x reference err + atol), tokens match on "
            f"{n_match}/{len(self.prompts)} prompts"
            + (f"; failed: {', '.join(bad)}" if bad else "")
        )
        return "\n".join(lines)


def write_json(results: Sequence[ParityResult], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"ok": all(r.ok for r in results), "runs": [r.to_dict() for r in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
