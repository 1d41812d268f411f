"""Exit codes: the small protocol between workers, the supervisor and the shell.

A worker that exits with BOOT tells its supervisor that restarting it will not help
(gunicorn's WORKER_BOOT_ERROR); the supervisor then stops with BOOT itself. The command
line tools use the same numbers, listed in docs/operations.md.
"""

OK = 0
CONFIG = 2  # bad config or usage
BOOT = 3  # a worker (or a tool) could not start: a server unreachable, a table unusable
LOST = 4  # bench: messages were lost
ERROR = 1  # an unexpected error (what Python exits with); bench: the sink or a server failed
NOT_DONE = 5  # dlq: some dead letters were not found or not replayed
