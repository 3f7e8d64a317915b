"""Load generators and side-by-side benchmarks (JSON + PNG output); see bench/README.md.

Not part of the test suite and not run in CI: every figure is a ratio measured in one run on
one machine, against the real peer or a theoretical limit (DESIGN.md, "Performance
discipline").
"""
