"""Interop with js-libp2p: a Node.js peer dials our daemon transport over TCP + Noise + Yamux.

The JS side (`js_peer.mjs`, dependencies pinned in package.json / package-lock.json) runs identify
and ping against our node, reports what it saw as JSON on stdout, and stays connected until we close
its stdin, so we can check our side too (connect event, ping back, identify of the JS peer). A JS
peer offering only plaintext must be refused.

Needs Node.js >= 20 and npm: the JS dependencies are installed once into tests/interop/node_modules
with `npm ci` (registry access on the first run only). A machine without node fails these tests
with a message saying so, rather than skipping them silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

pytest.importorskip("libp2p")

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL
from libp2p.peer.id import ID
from libp2p_events import next_event

from transport.base import PeerConnected, PeerDisconnected
from transport.libp2p import ModelPlaneConfig, open_libp2p_transport
from transport.libp2p.model_plane import MODEL_PROTOCOL

JS_DIR = Path(__file__).resolve().parent
JS_PEER = JS_DIR / "js_peer.mjs"
MIN_NODE_MAJOR = 20
FAST = ModelPlaneConfig(io_timeout=2.0, connect_timeout=5.0, transfer_timeout=15.0, queue_timeout=0.5)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found on PATH: the js-libp2p interop tests need Node.js >= {MIN_NODE_MAJOR} "
            "and npm (e.g. `apt-get install nodejs npm`, or https://nodejs.org)",
            pytrace=False,
        )
    return path


def _npm_ci_needed() -> bool:
    """node_modules is missing, or older than the lock file (npm ci writes .package-lock.json there)."""
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    return (
        not installed.exists() or installed.stat().st_mtime < (JS_DIR / "package-lock.json").stat().st_mtime
    )


@pytest.fixture(scope="module")
def node_cmd() -> list[str]:
    """The command that runs the JS peer, with its dependencies installed."""
    node = _tool("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"Node.js {version} is too old: js-libp2p 3.x needs >= {MIN_NODE_MAJOR}", pytrace=False)
    if _npm_ci_needed():
        npm = _tool("npm")
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("`npm ci` in tests/interop took over 300 s (is the npm registry reachable?)")
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci` in tests/interop failed ({done.returncode}); is the npm registry reachable?\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}",
                pytrace=False,
            )
    return [node, str(JS_PEER)]


def run(fn, *, timeout: float = 45.0):
    async def main():
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def ours():
    return open_libp2p_transport(key_pair=create_new_key_pair(), model=FAST)


class JsPeer:
    """A running `js_peer.mjs`: its stdout read as JSON lines, its stderr kept for failure messages."""

    def __init__(self, process: trio.Process, stderr_path: Path) -> None:
        self.process = process
        self._stderr_path = stderr_path
        self._buffer = b""

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")[-4000:]

    async def line(self, *, timeout: float = 30.0) -> dict:
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                data = await self.process.stdout.receive_some()
                if not data:
                    raise AssertionError(f"the JS peer exited without output; stderr:\n{self.stderr()}")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            result = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"the JS peer printed {line[:500]!r}; stderr:\n{self.stderr()}") from exc
        assert result.get("ok"), f"the JS peer failed: {result}; stderr:\n{self.stderr()}"
        return result

    async def close_stdin(self) -> None:
        """The JS peer's cue to disconnect and exit."""
        await self.process.stdin.aclose()

    async def wait(self, *, timeout: float = 10.0) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


async def start_js_peer(cmd: list[str], addr: str, tmp_path: Path, *args: str) -> JsPeer:
    stderr_path = tmp_path / "js_peer.stderr"
    with open(stderr_path, "wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*cmd, addr, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=JS_DIR,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
    return JsPeer(process, stderr_path)


def test_a_js_libp2p_peer_identifies_and_pings_our_node_over_noise_and_yamux(node_cmd, tmp_path):
    async def main():
        async with ours() as node:
            js = await start_js_peer(node_cmd, node.addrs[0], tmp_path)
            try:
                seen = await js.line()

                # What the JS peer saw of us.
                assert seen["connection"] == {
                    "remote_peer": node.peer_id,
                    "encryption": "/noise",
                    "multiplexer": "/yamux/1.0.0",
                    "direction": "outbound",
                }
                ident = seen["identify"]
                assert ident["peer_id"] == node.peer_id
                assert ident["agent_version"].startswith("py-libp2p/")
                assert ident["protocol_version"] == "ipfs/0.1.0"
                assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, MODEL_PROTOCOL} <= set(ident["protocols"])
                ours_listening = {addr.rsplit("/p2p/", 1)[0] for addr in node.addrs}
                assert ours_listening <= set(ident["listen_addrs"])
                assert ident["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
                assert ident["signed_peer_record"] is True
                rtts = seen["ping_rtts_ms"]
                assert len(rtts) == 3 and all(isinstance(r, int) and 0 <= r < 5000 for r in rtts), rtts

                # What we saw of it: a connection event, a ping back, and our host's own identify of it.
                js_id = seen["peer_id"]
                assert await next_event(node, PeerConnected) == PeerConnected(js_id)
                assert js_id in node.peers()
                stream = await node.host.new_stream(ID.from_base58(js_id), [PING_PROTOCOL])
                try:
                    with trio.fail_after(5):
                        rtt = await perform_ping_roundtrip(stream)
                    assert 0 <= rtt < 5000
                finally:
                    await stream.close()
                with trio.fail_after(10):
                    while PING_PROTOCOL not in node.host.get_peerstore().get_protocols(ID.from_base58(js_id)):
                        await trio.sleep(0.05)

                await js.close_stdin()
                assert (await js.line())["still_connected"] is True  # nothing dropped it meanwhile
                assert await js.wait() == 0
            finally:
                js.process.kill()
            assert await next_event(node, PeerDisconnected) == PeerDisconnected(js_id)

    run(main)


def test_a_js_libp2p_peer_offering_only_plaintext_is_refused(node_cmd, tmp_path):
    async def main():
        async with ours() as node:
            js = await start_js_peer(node_cmd, node.addrs[0], tmp_path, "--plaintext")
            try:
                seen = await js.line()
                await js.close_stdin()
                assert await js.wait() == 0
            finally:
                js.process.kill()
            assert seen["refused"] is True, seen
            assert "plaintext" in seen["error"], seen  # refused for its security protocol, not by accident
            assert node.peers() == frozenset()
            with pytest.raises(trio.WouldBlock):
                node.events._receive.receive_nowait()  # not even a transient PeerConnected

    run(main)
