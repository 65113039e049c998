"""Errors raised by the transport layer.

Every failure to understand bytes from the wire is a single `DecodeError`, so callers at the
edge need exactly one ``except`` clause to drop a bad message and keep serving.
"""


class TransportError(Exception):
    """Base class of everything the transport layer raises on purpose."""


class DecodeError(TransportError):
    """Bytes from the wire are not a valid message (malformed, oversized, unknown type or version)."""


class PeerUnreachable(TransportError):
    """The peer is not connected, or it went away while we were talking to it."""
