"""Where the frames are: token roles (text, boi, patch, eoi) and frame ids of a (ragged) batch.

Built from ``token_type_ids`` once, before any pruning (`TokenLayout.from_token_types`), then
carried through every pruning stage (`TokenLayout.select`), so a later stage still knows which
token is a boi, a patch of frame 7 or text even after tokens were dropped (types alone cannot
tell: with the base template all frames form one run of vision tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE

__all__ = ["BOI", "EOI", "PAD", "PATCH", "TEXT", "TokenLayout", "as_padded"]

# Token roles.
PAD, TEXT, BOI, PATCH, EOI = -1, 0, 1, 2, 3


def as_padded(
    token_type_ids: torch.Tensor | Sequence[torch.Tensor], lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token types [B, S] padded with language, lengths int64 [B]) from a padded batch (with
    optional ``lengths``) or a list of 1-D sequences of different lengths."""
    if isinstance(token_type_ids, torch.Tensor):
        if token_type_ids.dtype.is_floating_point or token_type_ids.dim() not in (1, 2):
            raise ValueError(
                f"token_type_ids: expected an integer tensor [B, S] or [S], got "
                f"{token_type_ids.dtype} {tuple(token_type_ids.shape)}"
            )
        t = token_type_ids.unsqueeze(0) if token_type_ids.dim() == 1 else token_type_ids
        if lengths is None:
            lengths = torch.full((t.shape[0],), t.shape[1], dtype=torch.long, device=t.device)
        lengths = torch.as_tensor(lengths, device=t.device).to(torch.long)
        if lengths.shape != (t.shape[0],) or bool(((lengths < 0) | (lengths > t.shape[1])).any()):
            raise ValueError(f"lengths: expected [B={t.shape[0]}] values in [0, {t.shape[1]}]")
        return t, lengths
    seqs = list(token_type_ids)
    if not seqs or any(not isinstance(s, torch.Tensor) or s.dim() != 1 for s in seqs):
        raise ValueError("token_type_ids: expected a tensor or a non-empty list of 1-D tensors")
    if lengths is not None:
        raise ValueError("lengths: not needed with a list of sequences")
    s_max = max(int(s.shape[0]) for s in seqs)
    t = torch.full((len(seqs), s_max), LANGUAGE_TOKEN_TYPE, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        t[i, : s.shape[0]] = s
    lens = torch.tensor([int(s.shape[0]) for s in seqs], dtype=torch.long, device=t.device)
    return t, lens


@dataclass(frozen=True)
class TokenLayout:
    """Roles and frames of a padded batch [B, S].

    ``role`` int64 [B, S]: PAD (-1, past ``lengths``), TEXT, BOI, PATCH or EOI; ``frame`` int64
    [B, S]: the global frame index (videos of the batch numbered back to back) of a vision
    token, -1 otherwise; ``slot`` [B, S]: the token's index within its frame in the UNPRUNED
    sequence (boi 0, patches 1..N, eoi N+1), -1 for text; ``cu_frames`` int64 [B+1];
    ``tokens_per_frame``: N + 2; ``lengths`` [B].
    """

    role: torch.Tensor
    frame: torch.Tensor
    slot: torch.Tensor
    lengths: torch.Tensor
    cu_frames: torch.Tensor
    tokens_per_frame: int

    @property
    def batch_size(self) -> int:
        return int(self.role.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.cu_frames[-1])

    @property
    def patches_per_frame(self) -> int:
        return self.tokens_per_frame - 2

    @property
    def real(self) -> torch.Tensor:
        return self.role != PAD

    @property
    def vision(self) -> torch.Tensor:
        return self.frame >= 0

    @property
    def patch(self) -> torch.Tensor:
        return self.role == PATCH

    @property
    def token_type_ids(self) -> torch.Tensor:
        """[B, S]: vision for boi/patch/eoi, language for text and padding."""
        return torch.where(self.vision, VISION_TOKEN_TYPE, LANGUAGE_TOKEN_TYPE)

    @classmethod
    def from_token_types(
        cls,
        token_type_ids: torch.Tensor | Sequence[torch.Tensor],
        tokens_per_frame: int,
        lengths: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Layout of an unpruned batch: every run of vision tokens is a whole number of frames
        of ``tokens_per_frame`` tokens (boi, N patches, eoi) - the CogVLM2 prompt layout."""
        if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int):
            raise TypeError(f"tokens_per_frame: expected an int >= 3, got {tokens_per_frame!r}")
        if tokens_per_frame < 3:
            raise ValueError(f"tokens_per_frame: expected an int >= 3, got {tokens_per_frame}")
        types, lens = as_padded(token_type_ids, lengths)
        bad = (types != LANGUAGE_TOKEN_TYPE) & (types != VISION_TOKEN_TYPE)
        if bool(bad.any()):
            raise ValueError("token_type_ids: expected only 0 (language) and 1 (vision)")
        b, s = types.shape
        real = torch.arange(s, device=types.device).unsqueeze(0) < lens.unsqueeze(1)
        vis = (types == VISION_TOKEN_TYPE) & real
        ordinal = vis.long().cumsum(1) - 1  # vision tokens before this one, in its row
        tpf = tokens_per_frame
        run_start = vis & ~torch.cat([torch.zeros_like(vis[:, :1]), vis[:, :-1]], 1)
        run_end = vis & ~torch.cat([vis[:, 1:], torch.zeros_like(vis[:, :1])], 1)
        if bool(
            (run_start & (ordinal % tpf != 0)).any() | (run_end & (ordinal % tpf != tpf - 1)).any()
        ):
            raise ValueError(
                f"token_type_ids: every run of vision tokens must be a whole number of frames of "
                f"tokens_per_frame={tpf} tokens (boi, {tpf - 2} patches, eoi)"
            )
        frames_per_row = vis.sum(1) // tpf
        cu = torch.zeros(b + 1, dtype=torch.long, device=types.device)
        cu[1:] = frames_per_row.cumsum(0)
        slot = torch.where(vis, ordinal % tpf, -1)
        frame = torch.where(vis, ordinal // tpf + cu[:-1].unsqueeze(1), -1)
        role = torch.full_like(types, TEXT)
        role = torch.where(slot == 0, BOI, role)
        role = torch.where(slot == tpf - 1, EOI, role)
        role = torch.where(vis & (slot > 0) & (slot < tpf - 1), PATCH, role)
        role = torch.where(real, role, PAD)
        return cls(role, frame, slot, lens, cu, tpf)

    def select(self, keep: torch.Tensor) -> TokenLayout:
        """The layout of the kept tokens (``keep`` bool [B, S]), left-aligned and padded."""
        if tuple(keep.shape) != tuple(self.role.shape) or keep.dtype != torch.bool:
            raise ValueError(
                f"keep: expected bool {tuple(self.role.shape)}, got {keep.dtype} "
                f"{tuple(keep.shape)}"
            )
        keep = keep & self.real
        lens = keep.sum(1)
        s_new = int(lens.max()) if lens.numel() else 0
        # Stable sort moves kept tokens to the front in their order (True sorts first as 1).
        order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices
        order = order[:, :s_new]
        valid = torch.arange(s_new, device=keep.device).unsqueeze(0) < lens.unsqueeze(1)

        def take(t: torch.Tensor, fill: int) -> torch.Tensor:
            return torch.where(valid, t.gather(1, order), fill)

        return TokenLayout(
            take(self.role, PAD),
            take(self.frame, -1),
            take(self.slot, -1),
            lens,
            self.cu_frames,
            self.tokens_per_frame,
        )
