"""Moved to :mod:`tc_circuits.training.distributed`; this import path keeps working (same module object)."""

import sys

from tc_circuits.training import distributed as _module

sys.modules[__name__] = _module
