"""Benchmarks: each prints ratios measured in one run (never timed assertions). `make bench` runs them all."""
