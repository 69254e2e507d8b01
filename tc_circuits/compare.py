"""Moved to :mod:`tc_circuits.evaluation.compare`; this import path keeps working (same module object)."""

import sys

from tc_circuits.evaluation import compare as _module

sys.modules[__name__] = _module
