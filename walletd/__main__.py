"""`python -m walletd`: the console script (walletd/cli.py)."""

from walletd.cli import main

main()
