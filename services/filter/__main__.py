"""``python -m services.filter``: the filter's container entrypoint."""

from __future__ import annotations

import sys

from services.filter.main import main

if __name__ == "__main__":
    sys.exit(main())
