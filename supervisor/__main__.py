import sys

from supervisor.cli import main

sys.exit(main(sys.argv[1:]))
