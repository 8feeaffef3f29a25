"""Malware scanning of uploaded files (ICAP, RFC 3507)."""
