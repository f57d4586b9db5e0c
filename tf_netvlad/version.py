"""The package version (read by setup.py and written into exported models' metadata)."""

__version__ = "0.1.0"
