"""fastproxy: a high-performance HTTP forward and reverse proxy with a compiled hot path."""

__version__ = "0.1.0"
