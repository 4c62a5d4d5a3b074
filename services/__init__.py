"""The three services and the `mati2sentinel` command that runs them."""
