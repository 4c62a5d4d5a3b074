"""The pure core: indicators, parsing, filters, fingerprints, STIX mapping, settings, errors,
back-off and pacing policies. No I/O library is imported here (``lint-imports`` checks), so
everything in it is tested without a server."""
