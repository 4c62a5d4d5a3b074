"""The whole pipeline run locally against the simulators, for ``make demo``, the end-to-end
tests and the benchmarks. It runs the product, so it is neither product nor simulator, and it
is not part of the installed package."""
