"""Client tests run against the real peer packages (circuit-tracer, SAELens, sparsify).

They need the peers environment (``bench/requirements-peers.txt``; ``.ci/run`` builds it). In
an environment without the peers this folder is skipped at collection; with
``TC_REQUIRE_PEERS=1`` (set by ``.ci/run``) a missing peer is an error instead, so CI cannot
pass without running them.
"""

from __future__ import annotations

import importlib.util
import os

PEERS = ("circuit_tracer", "sae_lens", "sparsify")
MISSING = [name for name in PEERS if importlib.util.find_spec(name) is None]

if MISSING and os.environ.get("TC_REQUIRE_PEERS") == "1":
    raise RuntimeError(f"TC_REQUIRE_PEERS=1 but peer packages {MISSING} are not importable")

collect_ignore_glob = ["test_*.py"] if MISSING else []
