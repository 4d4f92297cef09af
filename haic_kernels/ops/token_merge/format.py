"""Constants of the token_merge ops' formats, shared by api, the reference and the backends
(a leaf: the reference must not import the dispatch module that loads it)."""

from __future__ import annotations

__all__ = ["NO_PREVIOUS"]

#: patch_difference score of a frame without a previous one: above every uint8 difference.
NO_PREVIOUS = 256
