"""opinfer: decentralized inference with optimistic verification."""

__version__ = "0.1.0"
