"""Moved to :mod:`tc_circuits.coders.transcoder`; this import path keeps working (same module object)."""

import sys

from tc_circuits.coders import transcoder as _module

sys.modules[__name__] = _module
