"""Benchmark: simulated traffic, metrics, published baselines."""
