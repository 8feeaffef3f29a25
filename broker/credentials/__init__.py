"""Broker keys (SSH host key, user CA, recording key, TLS), and the device secret vault."""
