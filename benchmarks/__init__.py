"""Speed, memory and FLOP benchmarks of the sparse model (issue #7); see docs/benchmarks.md.

Run a script with `python -m benchmarks.attention` or `python -m benchmarks.model`
(`--help` for options, `--quick` for a smoke run on small shapes).
"""
