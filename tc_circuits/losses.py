"""Moved to :mod:`tc_circuits.coders.losses`; this import path keeps working (same module object)."""

import sys

from tc_circuits.coders import losses as _module

sys.modules[__name__] = _module
