"""Benchmarks of the SegEvery service: ``python -m benchmarks.run`` writes BENCHMARKS.md and
docs/benchmarks.png."""
