import pytest
import trio

from transport.base import PeerConnected, Received
from transport.libp2p.inbox import Inbox, Slots


def test_receive_nowait_gives_events_in_order_and_each_message_slot_back():
    async def main():
        inbox, slots = Inbox(), Slots("models", 2)
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()
        inbox.push_peer_event(PeerConnected("a"))
        for n in range(2):
            await slots.reserve()
            inbox.deliver(Received("a", n), slots)
        assert slots.free == 0
        assert inbox.receive_nowait() == PeerConnected("a")
        assert inbox.receive_nowait() == Received("a", 0)
        assert slots.free == 1
        assert await inbox.receive() == Received("a", 1)
        assert slots.free == 2
        inbox.close()
        with pytest.raises(trio.EndOfChannel):
            inbox.receive_nowait()

    trio.run(main)
