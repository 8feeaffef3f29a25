"""The vendor access broker: time-bound, approved, recorded access to medical devices."""

__version__ = "0.1.0"
