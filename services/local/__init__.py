"""Running the pipeline on one machine: a private Redis (the embedded bus) and the three
services as child processes, for `make run` and `make demo`."""
