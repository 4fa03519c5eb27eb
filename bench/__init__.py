"""Benchmarks: ``python -m bench [--profile quick|full] [--only p1,p2]`` (``make bench``)."""
