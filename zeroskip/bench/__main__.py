"""``python -m zeroskip.bench``: the same as ``zeroskip bench``."""

from __future__ import annotations

import sys

from .command import main

sys.exit(main())
