"""Moved to :mod:`tc_circuits.models.model_info`; this import path keeps working (same module object)."""

import sys

from tc_circuits.models import model_info as _module

sys.modules[__name__] = _module
