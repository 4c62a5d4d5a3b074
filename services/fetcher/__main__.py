"""``python -m services.fetcher``: run the fetcher until a signal stops it."""

from services.fetcher.main import main

raise SystemExit(main())
