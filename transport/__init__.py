"""Moves messages between peer IDs; knows nothing of learning.

`Transport` is the seam: the in-memory implementation serves the emulator and unit tests, the
libp2p one serves the daemon.
"""
