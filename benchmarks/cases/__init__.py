"""Benchmark cases: castore and its peers, each returning rows of the results table."""
