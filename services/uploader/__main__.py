"""``python -m services.uploader``."""

from services.uploader.main import main

raise SystemExit(main())
