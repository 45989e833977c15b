"""Benchmarks of the installed llmnb. Run from the repository root: `python -m benchmarks.step`,
`pytest benchmarks/` (the pytest-benchmark suites)."""
