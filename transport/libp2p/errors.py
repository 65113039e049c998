"""Errors only the libp2p transport raises, all under `transport.errors.TransportError`.

A caller of the generic `Transport` interface needs only `PeerUnreachable`; these subclasses say more
to the daemon, which knows it runs on libp2p (a refused key file, a message too big for gossip).
"""

from __future__ import annotations

from transport.errors import PeerUnreachable, TransportError

__all__ = ["InsecureKeyFile", "KeyFileError", "ListenFailed", "MessageTooLarge", "TransferRejected"]


class KeyFileError(TransportError):
    """The identity key file cannot be used (unreadable, not a key, not Ed25519)."""


class InsecureKeyFile(KeyFileError):
    """The identity key file is readable by users other than its owner; we refuse to use it."""


class ListenFailed(TransportError, OSError):
    """Some listen addresses could not be bound (port in use, not an address of this machine).

    py-libp2p only logs such a failure, and a node left listening on fewer addresses than it was
    given (often none) is unreachable at the addresses it was configured with. An `OSError` too, so
    callers that already report bind failures report this one the same way.
    """

    def __init__(self, addrs: list[str]) -> None:
        super().__init__(
            f"cannot listen on {', '.join(addrs)} (address in use, or not an address of this machine?)"
        )
        self.addrs = addrs


class MessageTooLarge(TransportError, ValueError):
    """A message is over the size the chosen plane accepts (e.g. a control message over the gossip cap)."""


class TransferRejected(PeerUnreachable):
    """The peer read our transfer and refused it (bad header, hash mismatch, undecodable, busy).

    A subclass of `PeerUnreachable` so generic callers treat it as a failed delivery.
    """
