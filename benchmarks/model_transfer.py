"""Model-transfer throughput on loopback: raw TCP, a bare py-libp2p stream, and our model plane.

Three ways to move N MiB from one process to another over 127.0.0.1, measured in one run:

  tcp      trio TCP stream: the sender writes N MiB in 1 MiB chunks and half-closes, the receiver
           reads to EOF and answers one byte.
  libp2p   a bare stream between two hosts built as the daemon builds them (TCP + Noise + Yamux,
           `transport.libp2p.host.build_host`): same exchange on a protocol of its own.
  model    `Libp2pTransport.send` of a `ModelUpdate` holding one float32 tensor of N MiB, i.e. our
           codec (msgpack), header, chunking, sha256 on both sides, deadlines, decode at the
           receiver (which drains `events`); `send` returns once the receiver verified and queued
           the message.

Each is timed at the sender, from the start of the send to the receiver's one-byte answer, for one
pair and for `--fan-in` senders to one receiver at once (aggregate MiB/s, all tensors counted). N is
the tensor size; the model plane also carries a few dozen bytes of header and framing.

With `--layout split` (the default) the receiver runs in a child process and all senders in this
one, as on two machines; with `single` everything shares one trio loop (and one core). Methods are
interleaved within each repeat, in reverse order every other repeat, so a noisy machine hits them
alike; medians are printed, and the model plane as a fraction of the bare stream (the target is
>= 80 %), the median of that ratio within each repeat with its range over the repeats. `--profile`
adds a cProfile of one in-process model-plane transfer and micro-timings of its CPU steps.

    PYTHONPATH=. python benchmarks/model_transfer.py --sizes 64 256 --repeats 3 --fan-in 4
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import multiprocessing
import pstats
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import multiaddr
import numpy as np
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr

from transport import codec
from transport.base import Received
from transport.libp2p import ModelPlaneConfig, open_libp2p_transport
from transport.libp2p.host import build_host, parse_multiaddrs
from transport.messages import ModelPayload, ModelUpdate

MiB = 2**20
CHUNK = MiB
BENCH_PROTOCOL = TProtocol("/p2pfl/bench/1.0.0")
METHODS = ("tcp", "libp2p", "model")
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
DEFAULT_READ_PAUSE = ModelPlaneConfig().read_pause


def model_config(options: dict) -> tuple[ModelPlaneConfig, codec.Limits]:
    """Deadlines and caps with room for the largest transfer (defaults fit up to 512 MiB, fan-in 4)."""
    max_mib, fan_in = options["max_mib"], options["fan_in"]
    body_cap = max(codec.DEFAULT_LIMITS.max_frame_bytes, (max_mib + 1) * MiB)
    config = ModelPlaneConfig(
        io_timeout=30.0,  # a busy 2-core machine can starve one stream for seconds
        transfer_timeout=max(600.0, max_mib * fan_in / 2.0),  # even at 2 MiB/s
        max_body_bytes=body_cap,
        max_inbound=max(4, fan_in),
        read_pause=options.get("read_pause", DEFAULT_READ_PAUSE),
    )
    limits = codec.Limits(
        max_frame_bytes=body_cap, max_elements=max(codec.DEFAULT_LIMITS.max_elements, max_mib * MiB // 4)
    )
    return config, limits


def tensor_message(mib: int) -> ModelUpdate:
    return ModelUpdate(round=1, model=ModelPayload({"w": np.full(mib * MiB // 4, 0.5, np.float32)}, 1.0))


# --- receivers: each serves until cancelled, after reporting its address ----------------------------


async def tcp_receiver(options: dict, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(CHUNK):
                pass
            await stream.send_all(b"\x00")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(f"127.0.0.1:{port}")


async def libp2p_receiver(options: dict, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    host = build_host(create_new_key_pair(), max_connections=64)

    async def handle(stream) -> None:
        try:
            while True:
                try:
                    if not await stream.read(CHUNK):
                        break
                except StreamEOF:
                    break
            await stream.write(b"\x00")
        finally:
            await stream.close()

    host.set_stream_handler(BENCH_PROTOCOL, handle)
    async with host.run(parse_multiaddrs([LOOPBACK])):
        task_status.started(str(host.get_addrs()[0]))
        await trio.sleep_forever()


async def model_receiver(options: dict, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config, limits = model_config(options)
    async with open_libp2p_transport(
        key_pair=create_new_key_pair(), model=config, limits=limits, max_connections=64
    ) as transport:
        task_status.started(transport.addrs[0])
        async for event in transport.events:  # drain: a received model is dropped at once
            if isinstance(event, Received):
                del event


RECEIVERS = {"tcp": tcp_receiver, "libp2p": libp2p_receiver, "model": model_receiver}


def _child(method: str, options: dict, conn) -> None:
    """Receiver process: serve, send our address to the parent, stop when it says so."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(RECEIVERS[method], options)
            conn.send(addr)
            await trio.to_thread.run_sync(conn.recv)
            nursery.cancel_scope.cancel()

    trio.run(main)


@asynccontextmanager
async def receiver(method: str, options: dict, layout: str) -> AsyncIterator[str]:
    """A running receiver of `method`; its address."""
    if layout == "single":
        async with trio.open_nursery() as nursery:
            yield await nursery.start(RECEIVERS[method], options)
            nursery.cancel_scope.cancel()
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(method, options, child), daemon=True)
    process.start()
    try:
        if not await trio.to_thread.run_sync(parent.poll, 60.0):
            raise RuntimeError(f"the {method} receiver did not start")
        yield parent.recv()
    finally:
        parent.send("stop")
        await trio.to_thread.run_sync(process.join, 10.0)
        if process.is_alive():
            process.kill()


# --- senders: connected once, then one transfer per call ------------------------------------------

SendFn = Callable[[int], Awaitable[None]]  # tensor MiB -> transfer done


async def tcp_senders(stack: AsyncExitStack, addr: str, count: int, options: dict) -> list[SendFn]:
    host, port = addr.rsplit(":", 1)
    chunk = bytes(CHUNK)

    async def send(mib: int) -> None:
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            for _ in range(mib):
                await stream.send_all(chunk)
            await stream.send_eof()
            if await stream.receive_some(1) != b"\x00":
                raise RuntimeError("tcp receiver did not answer")

    return [send] * count


async def libp2p_senders(stack: AsyncExitStack, addr: str, count: int, options: dict) -> list[SendFn]:
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    chunk = bytes(CHUNK)
    senders = []
    for _ in range(count):
        host = build_host(create_new_key_pair())
        await stack.enter_async_context(host.run(parse_multiaddrs([LOOPBACK])))
        await host.connect(info)

        async def send(mib: int, host=host) -> None:
            stream = await host.new_stream(info.peer_id, [BENCH_PROTOCOL])
            try:
                for _ in range(mib):
                    await stream.write(chunk)
                await stream.close_write()
                if await stream.read(1) != b"\x00":
                    raise RuntimeError("libp2p receiver did not answer")
            finally:
                await stream.close()

        senders.append(send)
    return senders


async def model_senders(stack: AsyncExitStack, addr: str, count: int, options: dict) -> list[SendFn]:
    config, limits = model_config(options)
    # One message per size, built before any timing and shared by all senders.
    messages = {mib: tensor_message(mib) for mib in options["sizes"]}
    senders = []
    for _ in range(count):
        transport = await stack.enter_async_context(
            open_libp2p_transport(key_pair=create_new_key_pair(), model=config, limits=limits)
        )
        peer = await transport.connect(addr)

        async def send(mib: int, transport=transport, peer=peer) -> None:
            await transport.send(peer, messages[mib])  # encodes, hashes, transfers, awaits the verdict

        senders.append(send)
    return senders


SENDERS = {"tcp": tcp_senders, "libp2p": libp2p_senders, "model": model_senders}


async def timed(senders: list[SendFn], mib: int) -> float:
    """Aggregate MiB/s of all `senders` sending `mib` MiB each, at once."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for send in senders:
            nursery.start_soon(send, mib)
    return len(senders) * mib / (time.perf_counter() - start)


@dataclass
class Results:
    rates: dict[tuple[str, str, int], list[float]]  # (method, "pair" | "fan-in", MiB) -> MiB/s

    def median(self, method: str, shape: str, mib: int) -> float:
        return statistics.median(self.rates[(method, shape, mib)])


async def measure(args: argparse.Namespace) -> Results:
    options = {
        "max_mib": max(args.sizes),
        "fan_in": args.fan_in,
        "sizes": sorted({1, *args.sizes}),
        "read_pause": args.read_pause,
    }
    rates: dict[tuple[str, str, int], list[float]] = {}
    async with AsyncExitStack() as stack:
        senders = {}
        for method in args.methods:
            addr = await stack.enter_async_context(receiver(method, options, args.layout))
            senders[method] = await SENDERS[method](stack, addr, args.fan_in, options)
            await timed(senders[method][:1], 1)  # warm up: first stream, window growth
        for repeat in range(args.repeats):
            order = args.methods if repeat % 2 == 0 else args.methods[::-1]  # cancels a steady drift
            for mib in args.sizes:
                for shape, count in (("pair", 1), ("fan-in", args.fan_in)):
                    for method in order:
                        rate = await timed(senders[method][:count], mib)
                        rates.setdefault((method, shape, mib), []).append(rate)
                        print(f"  repeat {repeat + 1} {mib:>5} MiB {shape:<6} {method:<6} {rate:8.1f} MiB/s")
    return Results(rates)


def print_table(results: Results, args: argparse.Namespace) -> None:
    shapes = [("pair", "1 -> 1"), ("fan-in", f"{args.fan_in} -> 1")]
    print(f"\nmedian MiB/s of {args.repeats} repeats, layout {args.layout} (aggregate for fan-in)")
    header = f"{'size':>8} {'senders':>8}" + "".join(f"{m:>10}" for m in args.methods)
    if {"libp2p", "model"} <= set(args.methods):
        header += f"{'model/libp2p':>14}{'(range)':>12}"
    if {"libp2p", "tcp"} <= set(args.methods):
        header += f"{'libp2p/tcp':>12}"
    print(header)
    for mib in args.sizes:
        for shape, label in shapes:
            row = f"{mib:>4} MiB {label:>8}"
            row += "".join(f"{results.median(m, shape, mib):>10.1f}" for m in args.methods)
            if {"libp2p", "model"} <= set(args.methods):
                model, bare = results.rates[("model", shape, mib)], results.rates[("libp2p", shape, mib)]
                ratios = [m / b for m, b in zip(model, bare, strict=True)]
                row += f"{statistics.median(ratios):>13.0%} {min(ratios):>6.0%}-{max(ratios):<5.0%}"
            if {"libp2p", "tcp"} <= set(args.methods):
                ratio = results.median("libp2p", shape, mib) / results.median("tcp", shape, mib)
                row += f"{ratio:>11.1%} "
            print(row)
    print("model/libp2p: median over repeats of the ratio within each repeat; target >= 80 %")


# --- where the model plane's time goes -----------------------------------------------------------


def micro_timings(mib: int) -> None:
    """CPU cost of the model plane's own steps for one tensor, single-threaded, as MiB/s."""
    message = tensor_message(mib)
    body = codec.encode(message)
    writable = bytearray(body)
    pieces = [body[i : i + 64 * 2**10] for i in range(0, len(body), 64 * 2**10)]  # as Yamux hands them
    steps: dict[str, Callable[[], object]] = {
        "codec.encode (1 full copy)": lambda: codec.encode(message),
        "codec.encode_segments (no copy)": lambda: codec.encode_segments(message),
        "sha256": lambda: hashlib.sha256(body).digest(),
        "receive: bytearray += piece (old)": lambda: _accumulate(pieces),
        "receive: into np.empty(size) (new)": lambda: _fill(pieces, len(body)),
        "codec.decode, bytearray (copies)": lambda: codec.decode(writable),
        "codec.decode, bytes (in place)": lambda: codec.decode(body),
    }
    print(f"\nCPU cost of the model plane's steps for a {mib} MiB tensor (best of 3):")
    for name, step in steps.items():
        best = min(_seconds(step) for _ in range(3))
        print(f"  {name:<34} {mib / best:>9.0f} MiB/s  ({best * 1000:6.1f} ms)")


def _accumulate(pieces: list[bytes]) -> bytearray:
    out = bytearray()
    for piece in pieces:
        out += piece
    return out


def _fill(pieces: list[bytes], size: int) -> np.ndarray:
    out = np.empty(size, np.uint8)
    view, done = memoryview(out), 0
    for piece in pieces:
        view[done : done + len(piece)] = piece
        done += len(piece)
    return out


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_transfer(mib: int) -> None:
    """cProfile of one model-plane transfer with both ends in this process (so both are seen)."""

    async def main() -> None:
        options = {"max_mib": mib, "fan_in": 1, "sizes": [1, mib]}
        async with AsyncExitStack() as stack:
            addr = await stack.enter_async_context(receiver("model", options, "single"))
            (send,) = await model_senders(stack, addr, 1, options)
            await send(1)
            profiler = cProfile.Profile()
            profiler.enable()
            start = time.perf_counter()
            await send(mib)
            elapsed = time.perf_counter() - start
            profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(f"\ncProfile of one {mib} MiB model-plane transfer in one process ({mib / elapsed:.0f} MiB/s):")
        print("\n".join(out.getvalue().splitlines()[:45]))

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="tensor sizes in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fan-in", type=int, default=4, help="senders to one receiver at once")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--layout",
        choices=("split", "single"),
        default="split",
        help="split: receiver in a child process; single: everything in one trio loop",
    )
    parser.add_argument(
        "--read-pause",
        type=float,
        default=DEFAULT_READ_PAUSE,
        help="model plane read_pause, seconds (0: read each piece as it comes, as the bare stream does)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile one model-plane transfer")
    args = parser.parse_args()
    if min(args.sizes) < 1 or args.repeats < 1 or args.fan_in < 1:
        parser.error("sizes, repeats and fan-in must be >= 1")

    print(
        f"sizes {args.sizes} MiB, {args.repeats} repeats, fan-in {args.fan_in}, layout {args.layout}, "
        f"model plane read_pause {args.read_pause} s"
    )
    results = trio.run(measure, args)
    print_table(results, args)
    if args.profile:
        micro_timings(min(args.sizes))
        profile_transfer(min(args.sizes))


if __name__ == "__main__":
    main()
