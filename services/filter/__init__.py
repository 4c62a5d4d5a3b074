"""Applies the destination's filters and the seen cache (the pipeline issue builds it)."""
