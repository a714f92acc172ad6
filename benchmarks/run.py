"""Run the benchmark suite from a source checkout: ``python benchmarks/run.py [--quick] ...``.

The suite lives in the package (``zeroskip.bench``) so that ``zeroskip bench`` works from an install;
this script takes the same options. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from zeroskip.bench import main

if __name__ == "__main__":
    sys.exit(main())
