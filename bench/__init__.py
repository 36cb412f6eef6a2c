"""walletd's benchmark harness: `python -m bench.run` (or `make bench`; `make bench-smoke` for the
bounded CI version). See bench/run.py for what it measures and how."""
