"""Waiting for transport events in tests of the libp2p transport (ours and the interop ones)."""

import trio


async def next_event(transport, kind, *, timeout: float = 5.0):
    """The next event of type `kind`, skipping others (e.g. connection events)."""
    with trio.fail_after(timeout):
        while True:
            event = await transport.events.receive()
            if isinstance(event, kind):
                return event
