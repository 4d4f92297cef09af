"""Testing helpers: the parity rule of DESIGN.md (`rule`), the whole-model parity engine behind
`haic parity` (`model_parity`; `fp8_parity` for ``--precision fp8``), and the reference model's
pruning scores (`prune_scores`).

Importing this package loads only the rule (torch alone), so op tests and benchmark suites use
it without pulling in the models.
"""

from haic_kernels.testing.rule import DEFAULT_ATOL, ParityReport, assert_parity, parity, poison_

__all__ = ["DEFAULT_ATOL", "ParityReport", "assert_parity", "parity", "poison_"]
