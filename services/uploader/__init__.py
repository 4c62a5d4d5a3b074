"""Uploads accepted indicators to Sentinel within its quota (the pipeline issue builds it)."""
