import trio
import trio.testing

from gossip.dpsgd import DpsgdModel
from gossip.inbox import keep_newest
from transport.base import PeerConnected, Received
from transport.messages import ModelPayload


class QueuedEvents:
    """An event channel that counts how its reader read: awaited or taken at once."""

    def __init__(self, events) -> None:
        self._send, self._receive = trio.open_memory_channel(len(events) + 1)
        for event in events:
            self._send.send_nowait(event)
        self.awaited = self.taken_at_once = 0

    async def receive(self):
        self.awaited += 1
        return await self._receive.receive()

    def receive_nowait(self):
        event = self._receive.receive_nowait()
        self.taken_at_once += 1
        return event

    def close(self) -> None:
        self._send.close()


class EventsOnly:
    def __init__(self, events) -> None:
        self.events = events


def _model(round_: int) -> DpsgdModel:
    return DpsgdModel(round=round_, degree=4, model=ModelPayload(tensors={}, weight=1.0))


def test_keep_newest_takes_queued_events_without_awaiting_each_and_keeps_the_newest_round():
    queued = [
        Received("a", _model(2)),
        PeerConnected("c"),
        Received("b", _model(3)),
        Received("a", _model(1)),  # older than what "a" already sent: kept out
        Received("b", "not a model"),
    ]
    events = QueuedEvents(queued)
    inbox: dict = {}

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_newest, EventsOnly(events), inbox, DpsgdModel)
            await trio.testing.wait_all_tasks_blocked()
            events.close()

    trio.run(main)
    assert {peer: m.round for peer, m in inbox.items()} == {"a": 2, "b": 3}
    # One await for the first event, the other four taken as they were queued, one await for the end.
    assert (events.awaited, events.taken_at_once) == (2, 4)
