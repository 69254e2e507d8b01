"""Moved to :mod:`tc_circuits.evaluation.metrics`; this import path keeps working (same module object)."""

import sys

from tc_circuits.evaluation import metrics as _module

sys.modules[__name__] = _module
