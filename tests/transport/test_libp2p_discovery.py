"""Discovery on real libp2p hosts on 127.0.0.1: rendezvous at every node, mesh formation, churn, and
a rendezvous point that holds up against malformed or greedy requests.

Every host lives inside `open_libp2p_transport`'s block, so each test stops what it starts; each
test body runs under a deadline, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, suppress
from dataclasses import replace

import pytest
import trio

pytest.importorskip("libp2p")

import multiaddr
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.discovery.rendezvous import RendezvousClient
from libp2p.discovery.rendezvous.messages import (
    create_discover_message,
    create_discover_response_message,
    create_register_message,
)
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.peer.id import ID
from libp2p.utils.varint import decode_uvarint, encode_uvarint, encode_varint_prefixed

from transport.base import Received
from transport.libp2p import ModelPlaneConfig, open_libp2p_transport
from transport.libp2p.discovery import RENDEZVOUS_PROTOCOL, DiscoveryConfig, sanitize_addr
from transport.messages import ModelPayload, ModelUpdate

FAST = ModelPlaneConfig(io_timeout=1.0, connect_timeout=3.0, transfer_timeout=15.0, queue_timeout=0.5)
FAST_DISCOVERY = DiscoveryConfig(io_timeout=1.0, dial_timeout=2.0, backoff=(0.2, 2.0))
Status = Message.ResponseStatus


def run(fn, *, timeout: float = 40.0):
    async def main():
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def node(**kwargs):
    kwargs.setdefault("model", FAST)
    kwargs.setdefault("discovery", True)
    kwargs.setdefault("discovery_interval", 0.3)
    kwargs.setdefault("discovery_config", FAST_DISCOVERY)
    return open_libp2p_transport(key_pair=create_new_key_pair(), **kwargs)


async def until(condition, *, timeout: float = 30.0, what: str = "condition") -> float:
    """Poll `condition()` until true; the seconds it took. Fails the test past `timeout`, a hang
    guard generous enough for a loaded machine (how fast a mesh forms is not a unit test's business)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not reached within {timeout} s")
        await trio.sleep(0.05)
    return time.monotonic() - start


def full_mesh(hosts) -> bool:
    return all(h.peers() == {o.peer_id for o in hosts if o is not h} for h in hosts)


async def next_received(transport, *, timeout: float = 5.0):
    with trio.fail_after(timeout):
        while True:
            event = await transport.events.receive()
            if isinstance(event, Received):
                return event


async def rendezvous_raw(sender, point, frames: list[bytes], *, read: bool = True) -> Message | None:
    """Write hand-made bytes on a rendezvous stream to `point`; its parsed reply, or None if none."""
    stream = await sender.host.new_stream(ID.from_base58(point.peer_id), [RENDEZVOUS_PROTOCOL])
    try:
        for frame in frames:
            await stream.write(frame)
        if not read:
            return None
        with trio.fail_after(5):
            prefix = bytearray()
            while not prefix or prefix[-1] & 0x80:
                byte = await stream.read(1)
                if not byte:
                    return None
                prefix += byte
            length = decode_uvarint(bytes(prefix))
            body = b""
            while len(body) < length:
                chunk = await stream.read(length - len(body))
                if not chunk:
                    return None
                body += chunk
        reply = Message()
        reply.ParseFromString(body)
        return reply
    except Exception:
        return None
    finally:
        await stream.reset()


def register_frame(namespace: str, peer_id: str, addrs: list[str], ttl: int = 60) -> bytes:
    message = create_register_message(
        namespace, ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs], ttl
    )
    return encode_varint_prefixed(message.SerializeToString())


def test_four_hosts_bootstrapping_from_one_form_a_full_mesh_and_survive_a_departure():
    async def main():
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(node())
            hosts = [hub] + [await stack.enter_async_context(node(bootstrap=hub.addrs)) for _ in range(2)]
            async with node(bootstrap=hub.addrs) as leaver:
                await until(lambda: full_mesh([*hosts, leaver]), what="full mesh of 4")
                assert all(h.libp2p_stats.discovery_rounds >= 1 for h in hosts)
                # The hub learns its own registrations at its next round, which may come after the mesh.
                await until(
                    lambda: leaver.peer_id in hub.discovery.candidates(), what="the hub knows the leaver"
                )
            # The leaver unregistered on its way out and its links closed: dropped everywhere.
            await until(lambda: full_mesh(hosts), what="mesh of the 3 remaining")
            # The hub may handle the unregister after the links closed (it did under load).
            await until(
                lambda: (
                    leaver.peer_id
                    not in {peer.to_base58() for peer, _, _ in hub.discovery.server.registrations()}
                ),
                what="the leaver's registration gone from the hub",
            )
            # The rest keep going: dials to the leaver fail and back off, messages flow, and a
            # newcomer that knows only a non-bootstrap host still joins everyone.
            dials = [h.libp2p_stats.discovery_dials for h in hosts]
            await trio.sleep(3.0)  # ten rounds at 0.3 s; backoff 0.2 s doubling allows about five dials
            assert all(h.libp2p_stats.discovery_dials - d <= 6 for h, d in zip(hosts, dials, strict=True))
            update = ModelUpdate(round=3, model=ModelPayload({}, 1.0))
            await hosts[1].send(hosts[2].peer_id, update)
            assert (await next_received(hosts[2])).sender == hosts[1].peer_id
            newcomer = await stack.enter_async_context(node(bootstrap=hosts[2].addrs))
            await until(lambda: full_mesh([*hosts, newcomer]), what="mesh with the newcomer")

    run(main)


def test_a_register_in_flight_at_shutdown_is_answered_before_the_unregister():
    """A point serves each stream in its own task: a register cut off at shutdown could be served
    after the unregister, leaving the leaver registered there for a whole TTL."""

    async def main():
        # Room for the slowed streams besides the unregister: a point refuses a third stream at once.
        async with node(discovery_config=replace(FAST_DISCOVERY, max_streams_per_peer=8)) as hub:
            serve, slow, registered = hub.discovery.server._serve, trio.Event(), trio.Event()

            async def serve_slowly_when_asked(stream, peer):
                if slow.is_set() and not registered.is_set():  # the unregister gets no answer to wait for
                    await trio.sleep(0.25)  # within the half of unregister_all's timeout given to registers
                await serve(stream, peer)

            hub.discovery.server._serve = serve_slowly_when_asked
            requests: list[str] = []
            async with node(bootstrap=hub.addrs) as leaver:
                await until(lambda: leaver.peer_id in registered_at(hub), what="the leaver registered")
                finder = leaver.discovery
                request = finder._request

                async def logged_request(point, message, expect):
                    kind = Message.MessageType.Name(message.type)
                    requests.append(f"{kind} sent")
                    try:
                        response = await request(point, message, expect)
                    except BaseException as exc:  # Cancelled (alone or in a group) is no Exception
                        requests.append(f"{kind} {'failed' if isinstance(exc, Exception) else 'cancelled'}")
                        raise
                    requests.append(f"{kind} answered")
                    if message.type == Message.REGISTER:
                        registered.set()
                    return response

                finder._request = logged_request
                slow.set()

                def a_register_sent() -> bool:
                    finder._registered_until.clear()  # due: the next round registers (again, if one ran)
                    return "REGISTER sent" in requests

                await until(a_register_sent, what="a register in flight")
            # The register ran its course (answered, or failed on its own) before the unregister left.
            registering = [r for r in requests if r.split()[0] in ("REGISTER", "UNREGISTER")]
            assert registering[0] == "REGISTER sent", requests
            assert registering[1] in ("REGISTER answered", "REGISTER failed"), requests
            assert registering[2] == "UNREGISTER sent", requests
            await until(lambda: leaver.peer_id not in registered_at(hub), what="the leaver unregistered")

    run(main)


def registered_at(point) -> set[str]:
    return {peer.to_base58() for peer, _, _ in point.discovery.server.registrations()}


def test_discovery_dials_only_up_to_the_target_but_still_learns_everyone():
    async def main():
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(node(discovery_target=1))
            spokes = [
                await stack.enter_async_context(node(bootstrap=hub.addrs, discovery_target=1))
                for _ in range(3)
            ]
            ids = {s.peer_id for s in spokes}
            await until(lambda: all(ids - {s.peer_id} <= s.discovery.candidates() for s in spokes))
            await trio.sleep(0.6)  # two more rounds: still nobody dials beyond the target
            assert hub.peers() == ids
            assert all(s.peers() == {hub.peer_id} for s in spokes)
            assert all(s.libp2p_stats.discovery_dials == 0 for s in [hub, *spokes])
            # What discovery learned is enough for send() to dial a peer it is not connected to.
            update = ModelUpdate(round=1, model=ModelPayload({}, 1.0))
            await spokes[0].send(spokes[1].peer_id, update)
            assert (await next_received(spokes[1])).sender == spokes[0].peer_id

    run(main)


def test_a_peer_dropped_on_purpose_is_not_redialed_by_our_discovery():
    async def main():
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(node())
            a = await stack.enter_async_context(node(bootstrap=hub.addrs))
            b = await stack.enter_async_context(node(bootstrap=hub.addrs))
            await until(lambda: full_mesh([hub, a, b]))
            dials = a.libp2p_stats.discovery_dials
            await a.disconnect(b.peer_id)
            await trio.sleep(1.0)  # several rounds, each with a below-target node
            assert a.libp2p_stats.discovery_dials == dials

    run(main)


def test_transport_without_discovery_serves_no_rendezvous():
    async def main():
        async with open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST) as plain:
            assert plain.discovery is None
            async with node(bootstrap=plain.addrs) as seeker:
                await until(lambda: plain.peer_id in seeker.peers())
                await trio.sleep(0.5)
                assert seeker.libp2p_stats.rendezvous_requests_failed >= 1  # protocol not supported
                assert seeker.peers() == {plain.peer_id}

    run(main)


def test_the_stock_py_libp2p_rendezvous_client_speaks_to_our_point():
    async def main():
        async with AsyncExitStack() as stack:
            point = await stack.enter_async_context(node(discovery_target=0))
            other = await stack.enter_async_context(node(bootstrap=point.addrs, discovery_target=0))
            await until(
                lambda: any(
                    p.to_base58() == other.peer_id for p, _, _ in point.discovery.server.registrations()
                )
            )
            plain = await stack.enter_async_context(
                open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST, bootstrap=point.addrs)
            )
            await until(lambda: point.peer_id in plain.peers())
            client = RendezvousClient(plain.host, ID.from_base58(point.peer_id))
            assert await client.register("p2pfl", ttl=300) == 300
            peers, _ = await client.discover("p2pfl")
            assert {p.peer_id.to_base58() for p in peers} == {other.peer_id}  # not the asker itself
            assert [str(a) for a in peers[0].addrs] == [a.rsplit("/p2p/", 1)[0] for a in other.addrs]
            assert plain.peer_id in {p.to_base58() for p, _, _ in point.discovery.server.registrations()}

    run(main)


def test_the_rendezvous_point_refuses_what_it_should_and_keeps_serving():
    async def main():
        async with AsyncExitStack() as stack:
            point = await stack.enter_async_context(node(discovery_target=0))
            # A client without discovery, so only our hand-made requests reach the point.
            peer = await stack.enter_async_context(
                open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST, bootstrap=point.addrs)
            )
            await until(lambda: point.peer_id in peer.peers())
            stats = point.libp2p_stats
            port = peer.addrs[0].split("/tcp/")[1].split("/")[0]

            reply = await rendezvous_raw(peer, point, [register_frame("other", peer.peer_id, peer.addrs)])
            assert reply.registerResponse.status == Status.E_INVALID_NAMESPACE
            reply = await rendezvous_raw(peer, point, [register_frame("p2pfl", point.peer_id, peer.addrs)])
            assert reply.registerResponse.status == Status.E_NOT_AUTHORIZED
            many = [f"/ip4/127.0.0.1/tcp/{1000 + i}" for i in range(17)]
            reply = await rendezvous_raw(peer, point, [register_frame("p2pfl", peer.peer_id, many)])
            assert reply.registerResponse.status == Status.E_INVALID_PEER_INFO
            reply = await rendezvous_raw(
                peer, point, [register_frame("p2pfl", peer.peer_id, ["/ip4/1.2.3.4/udp/1"])]
            )
            assert reply.registerResponse.status == Status.E_INVALID_PEER_INFO
            reply = await rendezvous_raw(
                peer, point, [register_frame("p2pfl", peer.peer_id, peer.addrs, ttl=10**6)]
            )
            assert reply.registerResponse.status == Status.E_INVALID_TTL
            discover = create_discover_message("other", 10).SerializeToString()
            reply = await rendezvous_raw(peer, point, [encode_varint_prefixed(discover)])
            assert reply.discoverResponse.status == Status.E_INVALID_NAMESPACE
            # Broken framing: the stream is reset without a reply.
            assert await rendezvous_raw(peer, point, [encode_uvarint(10**9)]) is None  # too_large
            assert await rendezvous_raw(peer, point, [encode_varint_prefixed(b"\xff\xff\xff")]) is None
            assert await rendezvous_raw(peer, point, [b"\x05ab"]) is None  # stalls mid-message
            reasons = stats.rejected_by_reason
            assert reasons["rendezvous:namespace"] == 2 and reasons["rendezvous:not_self"] == 1
            assert reasons["rendezvous:addrs"] == 2 and reasons["rendezvous:ttl"] == 1
            assert reasons["rendezvous:too_large"] == 1 and reasons["rendezvous:malformed"] == 1
            await until(lambda: reasons["rendezvous:timeout"] == 1, timeout=3)  # io_timeout is 1 s
            assert point.discovery.server.registrations() == []

            # Still serving. An unspecified IP becomes the address the peer connected from; two
            # requests on one stream are fine.
            ok = register_frame("p2pfl", peer.peer_id, [f"/ip4/0.0.0.0/tcp/{port}"])
            reply = await rendezvous_raw(peer, point, [ok + ok])
            assert reply.registerResponse.status == Status.OK and reply.registerResponse.ttl == 60
            [(who, addrs, left)] = point.discovery.server.registrations()
            assert who.to_base58() == peer.peer_id and 55 < left <= 60
            assert [str(a) for a in addrs] == [f"/ip4/127.0.0.1/tcp/{port}"]
            assert stats.rendezvous_served >= 2

    run(main)


def test_a_point_holds_at_most_a_few_idle_streams_per_peer():
    async def main():
        async with AsyncExitStack() as stack:
            config = DiscoveryConfig(io_timeout=2.0, max_streams_per_peer=2)
            point = await stack.enter_async_context(node(discovery_target=0, discovery_config=config))
            peer = await stack.enter_async_context(
                open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST, bootstrap=point.addrs)
            )
            await until(lambda: point.peer_id in peer.peers())
            point_id = ID.from_base58(point.peer_id)
            streams = [await peer.host.new_stream(point_id, [RENDEZVOUS_PROTOCOL]) for _ in range(2)]
            for stream in streams:
                await stream.write(b"\x05")  # a prefix, then nothing: each handler waits for the body
            with suppress(Exception):  # the third is reset at once, maybe before negotiation ends
                streams.append(await peer.host.new_stream(point_id, [RENDEZVOUS_PROTOCOL]))
            reasons = point.libp2p_stats.rejected_by_reason
            await until(lambda: reasons["rendezvous:busy"] == 1, timeout=3)
            assert reasons["rendezvous:timeout"] == 0  # the two idle ones are still held...
            await until(lambda: reasons["rendezvous:timeout"] == 2, timeout=4)  # ...until io_timeout
            for stream in streams:
                await stream.reset()

    run(main)


def test_discovered_records_are_checked_before_use():
    async def main():
        async with AsyncExitStack() as stack:
            liar = await stack.enter_async_context(
                open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST)
            )
            honest = await stack.enter_async_context(node(discovery_target=0))

            def record(peer_id: bytes, addrs: list[bytes], namespace: str = "p2pfl") -> Message.Register:
                reg = Message.Register()
                reg.ns, reg.ttl = namespace, 60
                reg.peer.id = peer_id
                reg.peer.addrs.extend(addrs)
                return reg

            good = ID.from_base58(honest.peer_id).to_bytes()  # any valid ID will do
            other = ID.from_base58(liar.peer_id).to_bytes()
            tcp = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
            records = [
                record(good, [tcp]),  # our own ID: skipped
                record(other, [b"\x00garbage", multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/1").to_bytes(), tcp]),
                record(b"\x12\x05short", [tcp]),  # not a multihash
                record(bytes(34), [tcp], namespace="elsewhere"),
            ]

            async def lie(stream):
                try:
                    await stream.read(1024)
                    reply = create_discover_response_message(records).SerializeToString()
                    await stream.write(encode_varint_prefixed(reply))
                finally:
                    await stream.close()

            liar.host.set_stream_handler(RENDEZVOUS_PROTOCOL, lie)
            await honest.connect(liar.addrs[0])
            await until(lambda: honest.discovery.candidates() == {liar.peer_id})
            assert honest.discovery.candidate_addrs(liar.peer_id) == ["/ip4/127.0.0.1/tcp/4001"]

    run(main)


@pytest.mark.parametrize(
    ("addr", "observed", "expected"),
    [
        ("/ip4/10.0.0.5/tcp/4001", None, "/ip4/10.0.0.5/tcp/4001"),
        (
            "/ip4/10.0.0.5/tcp/4001/p2p/12D3KooWBUAFbgdZoAFYrjNEwp1fnYXQKJBRNEjKpaerWDubZTcF",
            None,
            "/ip4/10.0.0.5/tcp/4001",
        ),
        ("/dns4/node.example/tcp/4001", None, "/dns4/node.example/tcp/4001"),
        ("/ip6/::1/tcp/4001", "::1", "/ip6/::1/tcp/4001"),
        ("/ip4/0.0.0.0/tcp/4001", "192.0.2.7", "/ip4/192.0.2.7/tcp/4001"),
        ("/ip4/0.0.0.0/tcp/4001", None, None),
        ("/ip4/0.0.0.0/tcp/4001", "2001:db8::1", None),
        ("/ip4/127.0.0.1/tcp/4001", "192.0.2.7", None),
        ("/ip4/10.0.0.5/tcp/0", None, None),
        ("/ip4/10.0.0.5/udp/4001/quic-v1", None, None),
        ("/ip4/10.0.0.5/tcp/4001/ws", None, None),
    ],
)
def test_sanitize_addr(addr, observed, expected):
    result = sanitize_addr(multiaddr.Multiaddr(addr).to_bytes(), max_bytes=256, observed_ip=observed)
    assert (None if result is None else str(result)) == expected


def test_sanitize_addr_refuses_junk_and_long_input():
    assert sanitize_addr(b"\xff\x01garbage", max_bytes=256) is None
    long_name = multiaddr.Multiaddr("/dns4/" + "a" * 60 + "." + "b" * 60 + ".example/tcp/1").to_bytes()
    assert sanitize_addr(long_name, max_bytes=100) is None
    assert sanitize_addr(long_name, max_bytes=256) is not None
