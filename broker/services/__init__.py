"""Services: the operations protocol code (CLI, SSH, HTTP) calls. Services call the store."""

from broker.services.context import Context

__all__ = ["Context"]
