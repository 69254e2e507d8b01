"""Moved to :mod:`tc_circuits.models.loading`; this import path keeps working (same module object)."""

import sys

from tc_circuits.models import loading as _module

sys.modules[__name__] = _module
