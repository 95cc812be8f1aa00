"""tether's benchmark harness (not part of the test suite).

`uv run python -m bench` drives the real daemon (`tether run`, a subprocess) against the
stand-in API on loopback and writes the table and plots of docs/benchmarks.md.
"""
