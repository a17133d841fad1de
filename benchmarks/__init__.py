"""Measurements behind the numbers in docs/benchmarks.md; run them from the repository root as modules:
``python -m benchmarks.unet_speed``."""
