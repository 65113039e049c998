import pytest
import trio
import trio.testing
from scalar_learning import ScalarLearning

from gossip.federated import FederatedLearning
from transport.memory import open_memory_network


def run_fl(protocol: FederatedLearning, *, crash: str | None = None):
    peers = [protocol.server, *protocol.clients]
    learnings = {p: ScalarLearning(0.0, peer_id=p, step=1.0) for p in peers}

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            transports = {p: net.add_peer(p) for p in peers}
            if crash:
                net.crash(crash)
            async with trio.open_nursery() as nursery:
                for p in protocol.clients:
                    nursery.start_soon(protocol.run, transports[p], learnings[p])
                with trio.move_on_after(500):
                    await protocol.run(transports[protocol.server], learnings[protocol.server])
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return learnings


CLIENTS = tuple(f"c{i}" for i in range(8))


def test_the_server_merges_s_trained_models_per_round():
    learnings = run_fl(FederatedLearning(rounds=5, server="srv", clients=CLIENTS, s=3, seed=1))
    server = learnings["srv"]
    assert [r for r, _ in server.finished] == [1, 2, 3, 4, 5]
    assert server.value == 5.0  # every round trains the global model once more
    assert [len(senders) for senders in server.merged_senders] == [3] * 5
    assert sum(learnings[c].trained for c in CLIENTS) == 15
    assert server.trained == 0


def test_samples_follow_the_seed():
    def samples(seed):
        run = run_fl(FederatedLearning(rounds=4, server="srv", clients=CLIENTS, s=2, seed=seed))
        return run["srv"].merged_senders

    assert samples(3) == samples(3)
    assert samples(3) != samples(4)


def test_a_round_timeout_lets_the_server_go_on_without_a_crashed_client():
    protocol = FederatedLearning(rounds=3, server="srv", clients=CLIENTS, s=8, round_timeout=2.0)
    learnings = run_fl(protocol, crash="c0")
    assert [len(senders) for senders in learnings["srv"].merged_senders] == [7, 7, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(s=0), "s must be an int in"),
        (dict(s=9), "s must be an int in"),
        (dict(s=2.5), r"s must be an int in \[1, 8 clients\], got 2.5"),  # crashed in rng.sample
        (dict(s=True), "s must be an int in .*, got True"),  # one client a round
        (dict(server="c1"), "cannot also be a client"),
        (dict(round_timeout=0.0), "round_timeout must be"),
        (dict(round_timeout=True), "round_timeout must be .*, got True"),
        (dict(round_timeout="x"), "round_timeout must be .*, got 'x'"),
        (dict(rounds=-1), "rounds must be an int >= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    base = dict(rounds=1, server="srv", clients=CLIENTS, s=2)
    with pytest.raises(ValueError, match=message):
        FederatedLearning(**{**base, **kwargs})
