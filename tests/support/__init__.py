"""What the tests and benchmarks share: the daemon runner, sysfs board trees, Prometheus, fakes, PKI and
the ground-truth harness.

Test modules import from here (or take the fixtures of ``tests/conftest.py``),
never from one another.
"""
