"""Benchmarks: `make bench` (or `python -m bench [NAME...]`) runs them and prints a table.

Each benchmark module exposes ``run() -> list[Result]``; results also go to bench/results/*.json.
Speed and memory targets live here, never in tests, so a slow machine fails no test.
"""
