"""Hash-chained audit events and the structlog configuration."""

from broker.audit.chain import ChainProblem, iter_events, record, verify_rows

__all__ = ["ChainProblem", "iter_events", "record", "verify_rows"]
