"""Benchmarks: `make bench` runs bench/run.py; one module per family."""
