"""Throughput of the in-memory transport: wall-clock messages per second in virtual time.

`--peers` peers on a ring, each linked to its `--degree` nearest peers; every `--period` virtual
seconds each peer sends one small `ModelUpdate` to each of its neighbours, until `--messages`
messages were sent in all. Every peer drains its event channel. Prints messages/s for the whole
run (send + schedule + deliver + codec) and, for reference, for encoding and decoding alone.

    PYTHONPATH=. python benchmarks/memory_transport.py --peers 1000 --messages 100000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import trio
import trio.testing

from transport import codec
from transport.base import Received
from transport.memory import open_memory_network
from transport.messages import ModelPayload, ModelUpdate


def _message(size: int) -> ModelUpdate:
    return ModelUpdate(round=1, model=ModelPayload({"w": np.zeros(size, dtype=np.float32)}, 1.0))


def run_network(args: argparse.Namespace) -> tuple[float, int]:
    """Wall seconds and messages received for one run."""
    message = _message(args.tensor)
    per_round = args.peers * args.degree
    rounds = max(1, args.messages // per_round)
    expected = rounds * per_round
    received = 0
    done = trio.Event()

    async def drain(transport) -> None:
        nonlocal received
        async for event in transport.events:
            if isinstance(event, Received):
                received += 1
                if received == expected:
                    done.set()

    async def sender(transport, neighbours: list[str]) -> None:
        for _ in range(rounds):
            for peer in neighbours:
                await transport.send(peer, message)
            await trio.sleep(args.period)

    async def main() -> None:
        # Only the options given, so that the script also runs against older versions of the network.
        model = {"bandwidth": args.bandwidth} if args.bandwidth is not None else {}
        async with open_memory_network(latency=args.latency, **model) as net:
            ids = [f"p{i:06d}" for i in range(args.peers)]
            transports = [net.add_peer(p) for p in ids]
            half = args.degree // 2
            for i in range(args.peers):
                for d in range(1, half + 1):
                    net.connect(ids[i], ids[(i + d) % args.peers])
            async with trio.open_nursery() as nursery:
                for transport in transports:
                    nursery.start_soon(drain, transport)
                    neighbours = sorted(transport.peers())
                    nursery.start_soon(sender, transport, neighbours)
                await done.wait()
                nursery.cancel_scope.cancel()

    started = time.perf_counter()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - started, expected


def run_codec(args: argparse.Namespace, count: int) -> float:
    message = _message(args.tensor)
    started = time.perf_counter()
    for _ in range(count):
        codec.decode(codec.encode(message))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--degree", type=int, default=4, help="even: links to degree/2 peers each side")
    parser.add_argument("--period", type=float, default=1.0, help="virtual seconds between sending rounds")
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s per link (default unlimited)")
    parser.add_argument("--tensor", type=int, default=10, help="float32 values in each message")
    args = parser.parse_args()
    wall, count = run_network(args)
    codec_wall = run_codec(args, count)
    print(
        f"{args.peers} peers, {count} messages: {count / wall:,.0f} msgs/s ({wall:.2f} s); "
        f"codec alone (encode + decode): {count / codec_wall:,.0f} msgs/s ({codec_wall:.2f} s)"
    )


if __name__ == "__main__":
    main()
