"""Moved to :mod:`tc_circuits.training.activation_store`; this import path keeps working (same module object)."""

import sys

from tc_circuits.training import activation_store as _module

sys.modules[__name__] = _module
