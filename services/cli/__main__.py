"""``python -m services.cli``: the ``mati2sentinel`` command."""

from services.cli.main import main

raise SystemExit(main())
