"""wan: the command line for the Wan 2.1 video models."""

__version__ = "0.1.0"
