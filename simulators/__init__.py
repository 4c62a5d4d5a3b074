"""Faithful local stand-ins for MATI, Entra ID, Sentinel and Log Analytics, over real TLS.

Used by `make demo`, the tests and the benchmarks; product code never imports them."""
