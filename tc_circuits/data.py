"""Moved to :mod:`tc_circuits.training.data`; this import path keeps working (same module object)."""

import sys

from tc_circuits.training import data as _module

sys.modules[__name__] = _module
