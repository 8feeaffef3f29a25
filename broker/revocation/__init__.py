"""Cutting sessions on time: the live-session registry, the deadline scheduler, the change feed."""
