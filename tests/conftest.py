"""Shared test configuration: Hypothesis profiles.

Pick one with the ``HYPOTHESIS_PROFILE`` environment variable:

* ``default`` -- ~60 examples per property, random seed (the everyday run, well under a minute);
* ``ci``      -- the same budget, but derandomized so CI runs are reproducible;
* ``thorough``-- 1000 examples per property, for hunting numerical corner cases locally.

Tests that need a different budget (e.g. cheap properties worth more examples) scale it from
``settings().max_examples`` so that the profile still controls the overall size.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None,  # the first call into torch is slow; timing is not what these tests check
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints an @reproduce_failure blob
)

settings.register_profile("default", max_examples=60, **_common)
settings.register_profile("ci", max_examples=60, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
