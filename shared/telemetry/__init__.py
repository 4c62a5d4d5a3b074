"""Logs, traces, metrics, gauges and the health endpoints; the composition root feeds them."""
