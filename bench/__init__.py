"""Benchmarks for fastgate: end-to-end load (e2e.py) and HTTP-parsing micro-benchmarks.

Not part of the installed package and not collected by the default test run.
"""
