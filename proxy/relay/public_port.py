"""Moved: the public port is port.py, its connections connection.py and exchange.py."""

from .port import PublicPort

__all__ = ["PublicPort"]
