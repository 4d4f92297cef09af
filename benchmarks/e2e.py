"""End-to-end benchmark (video file -> tokens, fast vs reference): see haic_kernels/app/e2e.py.

python benchmarks/e2e.py --size full --json benchmarks/results/e2e_h100.json   # GPU
python benchmarks/e2e.py --size tiny                                           # CPU smoke
"""

import sys

from haic_kernels.app.e2e import main

if __name__ == "__main__":
    sys.exit(main())
