"""The ``mati2sentinel`` command (``main``): start a service or run an operator command, and
the local supervisor behind ``run-local`` and ``make run``."""
