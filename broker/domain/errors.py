"""Errors raised by pure domain rules. Each carries a message fit to show a user as one line."""

from __future__ import annotations


class DomainError(Exception):
    """A domain rule refused an operation."""


class InvalidTransition(DomainError):
    """A state machine was asked for a transition it does not allow."""


class InvariantViolation(DomainError):
    """An entity would break one of its invariants."""
