"""Pages MATI `/v4/indicator` and publishes each raw indicator (the pipeline issue builds it)."""
