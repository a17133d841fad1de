"""Measurements behind the README's numbers; run them from the repository root as modules:
``python -m benchmarks.unet_speed``."""
