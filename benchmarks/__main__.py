"""``python -m benchmarks``: the one entry point (see benchmarks/run.py)."""

import sys

from benchmarks.run import main

sys.exit(main())
