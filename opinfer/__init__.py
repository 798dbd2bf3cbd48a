"""opinfer: decentralized inference with optimistic verification."""

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import opinfer` stays light for the engine and the services.
    if name == "Client":
        from opinfer.sdk import Client

        return Client
    raise AttributeError(f"module 'opinfer' has no attribute {name!r}")
