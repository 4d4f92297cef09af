"""``python -m haic_kernels ...`` is the ``haic`` command."""

import sys

from haic_kernels.app.cli import main

sys.exit(main())
