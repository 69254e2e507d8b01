"""Moved to :mod:`tc_circuits.coders.activations`; this import path keeps working (same module object)."""

import sys

from tc_circuits.coders import activations as _module

sys.modules[__name__] = _module
