"""Pruned vs unpruned end to end (issue 7's numbers): see haic_kernels/app/prune_e2e.py.

python benchmarks/prune_e2e.py --size full --json benchmarks/results/prune_e2e_h100.json   # GPU
python benchmarks/prune_e2e.py --size tiny   # CPU smoke
"""

import sys

from haic_kernels.app.prune_e2e import main

if __name__ == "__main__":
    sys.exit(main())
