"""Approval links (signed single-use JWTs), the pages behind them, and notifications."""
