"""Errors of the admin API that every part of it raises."""

from __future__ import annotations


class APIError(Exception):
    """An error answered as `{"error": message}` with `status` (Caddy's caddy.APIError)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
