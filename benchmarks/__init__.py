"""The benchmark suite of the SegEvery service: one script per section of BENCHMARKS.md, each run as
``python -m benchmarks.<script>``."""
