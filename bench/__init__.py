"""Benchmarks: each prints its figures with the core count and writes JSON to results/."""
