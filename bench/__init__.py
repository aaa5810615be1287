"""Benchmarks: F0 backends (``comostream bench f0``); latency and quality come later."""
