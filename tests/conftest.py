"""Test-run settings shared by every test module.

Hypothesis runs derandomised by default (profile ``ci``: a fixed seed, no example database),
so every run of the suite, in CI or here, draws the same trees. The large randomised run
stays available by hand: ``HYPOTHESIS_PROFILE=random python -m pytest tests/test_properties.py``
draws new trees on each run (and ``--hypothesis-seed=N`` replays one).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
