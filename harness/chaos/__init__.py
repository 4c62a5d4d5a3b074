"""``make chaos``: the whole pipeline through a back-fill while its processes, Redis and the
simulated services misbehave on a seeded plan; then the workspace, the dead-letter queues,
the upload counts and the processes are checked. ``python -m harness.chaos --help``."""
