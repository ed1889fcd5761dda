"""The one place the cxr-edge version is written (setup.cfg and `--version` read it)."""
__version__ = "0.2.0"
