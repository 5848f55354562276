"""Benchmarks: speed and size measurements, run as ``python -m benchmarks.<name>`` (never timed tests)."""
