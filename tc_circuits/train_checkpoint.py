"""Moved to :mod:`tc_circuits.training.checkpoint`; this import path keeps working (same module object)."""

import sys

from tc_circuits.training import checkpoint as _module

sys.modules[__name__] = _module
