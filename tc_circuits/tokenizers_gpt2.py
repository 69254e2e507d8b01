"""Moved to :mod:`tc_circuits.models.tokenizers_gpt2`; this import path keeps working (same module object)."""

import sys

from tc_circuits.models import tokenizers_gpt2 as _module

sys.modules[__name__] = _module
