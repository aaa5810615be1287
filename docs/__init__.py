"""Reference pages shipped with the package (``protocol.md``), read with ``importlib.resources``."""
