"""Hash-chained audit events and the structlog configuration."""

from broker.audit.chain import ChainProblem, append, iter_events, record, verify_rows

__all__ = ["ChainProblem", "append", "iter_events", "record", "verify_rows"]
