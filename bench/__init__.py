"""``make bench``: the performance figures of the pipeline on this machine (``python -m bench``).

Each figure is a ratio to the limit that binds it, measured within one run, with the absolute
numbers beside it; one module per figure, ``bench.report`` for the table and the JSON.
Benchmarks are not tests: nothing here asserts a timing.
"""
