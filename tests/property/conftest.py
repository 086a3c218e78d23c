"""Hypothesis profiles for the property suite.

`deterministic` (the default, what `make test` and CI run): examples are derived from each test's own
source (derandomize) and no example database is read or written, so every run tries the same examples
and a failure in CI is the same failure on a laptop. `explore` (`BASENODE_HYPOTHESIS_PROFILE=explore
make test-property`): fresh random examples, ten times as many, for hunting new bugs by hand. (An
environment variable, not --hypothesis-profile: hypothesis reads that option before this file has
registered the profiles.)
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

# Each example talks to a real Consul agent and runs `haproxy -c`: slow by hypothesis' standards.
COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
    # No `explain` phase: it re-runs a failing example hundreds of times to list the lines it covers.
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
}
# 500 examples: the acceptance bar of issue 5, met by one test (tests/property/test_hostile_catalog.py).
settings.register_profile("deterministic", derandomize=True, max_examples=500, **COMMON)
settings.register_profile("explore", derandomize=False, max_examples=5000, **COMMON)
settings.load_profile(os.environ.get("BASENODE_HYPOTHESIS_PROFILE", "deterministic"))
