"""`python -m bench`: see bench/cli.py and docs/benchmarks.md."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
