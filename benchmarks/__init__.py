"""Benchmarks and the one-call device check (``python -m benchmarks.device_check``)."""
