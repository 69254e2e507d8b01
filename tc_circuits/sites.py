"""Moved to :mod:`tc_circuits.models.sites`; this import path keeps working (same module object)."""

import sys

from tc_circuits.models import sites as _module

sys.modules[__name__] = _module
