"""Benchmarks against the baselines (issue 5); not part of the test suite. See bench/RESULTS.md."""
