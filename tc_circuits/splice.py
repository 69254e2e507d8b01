"""Moved to :mod:`tc_circuits.evaluation.splice`; this import path keeps working (same module object)."""

import sys

from tc_circuits.evaluation import splice as _module

sys.modules[__name__] = _module
