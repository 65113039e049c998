"""The status endpoint, its Prometheus rendering and `p2pfl status`, against a canned document."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request

import pytest
import trio
from click.testing import CliRunner
from click.testing import Result as CliResult
from daemon_helpers import node_config

from p2pfl.cli import main
from p2pfl.daemon.embed import open_node
from p2pfl.daemon.metrics import render_metrics
from p2pfl.daemon.status import StatusServer, StatusUnavailable

PEERS = ["12D3KooWPeerA", "12D3KooWPeerB", "12D3KooWPeerC"]
DOCUMENT = {
    "peer_id": "12D3KooWSelf",
    "addrs": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWSelf"],
    "peers": PEERS,
    "state": "running",
    "protocol": "gossip",
    "rounds": 100,
    "round": 12,
    "started_round": 5,
    "accuracy": 0.91,
    "loss": None,
    "bytes_in": 2048,
    "bytes_out": 4096,
    "messages_in": 10,
    "messages_out": 11,
    "messages_rejected": 1,
    "models_rejected": 2,
    "libp2p": {
        "transfers_sent": 11,
        "transfers_failed": 0,
        "peers_banned": 1,
        "rejected_by_reason": {"transfer:busy": 3},
    },
    "banned_peers": {"12D3KooWRogue": 242.5},
    "checkpoint": {
        "enabled": True,
        "path": "/x/checkpoint.npz",
        "round": 12,
        "writes": 8,
        "failures": 0,
        "skipped": 2,
    },
    "history": [{"round": 12, "accuracy": 0.91, "loss": 0.3}],
    "version": "0.1.0",
}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


@pytest.fixture
def server():
    state = {"document": DOCUMENT, "unavailable": False}

    def snapshot():
        if state["unavailable"]:
            raise StatusUnavailable("the node has stopped")
        return state["document"]

    server = StatusServer(snapshot, host="127.0.0.1", port=0).start()
    server.state = state
    try:
        yield server
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_status_serves_the_snapshot_as_json(server):
    code, content_type, body = get(server.url + "/status")
    assert code == 200 and content_type == "application/json"
    assert json.loads(body) == DOCUMENT


def test_metrics_serve_prometheus_text(server):
    code, content_type, body = get(server.url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert "p2pfl_round 12.0" in text
    assert "p2pfl_bytes_sent_total 4096.0" in text and "p2pfl_bytes_received_total 2048.0" in text
    assert "p2pfl_models_rejected_total 2.0" in text
    assert "p2pfl_peers 3.0" in text
    assert 'p2pfl_libp2p_rejections_total{reason="transfer:busy"} 3.0' in text
    assert "p2pfl_libp2p_transfers_sent_total 11.0" in text
    assert "p2pfl_libp2p_peers_banned_total 1.0" in text and "p2pfl_banned_peers 1.0" in text
    assert "p2pfl_checkpoint_skipped_total 2.0" in text and "p2pfl_checkpoint_failures_total 0.0" in text
    assert 'p2pfl_state{state="running"} 1.0' in text
    assert 'peer_id="12D3KooWSelf"' in text


def test_unknown_paths_are_404_and_a_stopped_node_is_503(server):
    assert get(server.url + "/nope")[0] == 404
    server.state["unavailable"] = True
    code, _, body = get(server.url + "/status")
    assert code == 503 and json.loads(body) == {"error": "the node has stopped"}


def test_stop_closes_the_port(server):
    url = server.url
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/status", timeout=2)


def test_unknown_values_are_nan_in_metrics():
    text = render_metrics({"round": 0, "accuracy": None}).decode()
    assert "p2pfl_accuracy NaN" in text and "p2pfl_round 0.0" in text


def test_status_cli_prints_a_summary_with_every_peer(server):
    result = CliRunner().invoke(main, ["status", "--url", server.url])
    assert result.exit_code == 0, result.output
    assert "12D3KooWSelf" in result.output and "round 12 of 100" in result.output
    assert "accuracy  0.9100" in result.output and "peers (3)" in result.output
    assert all(f"  {peer}" in result.output for peer in PEERS)
    assert "banned (1)\n  12D3KooWRogue  (242 s left)" in result.output
    assert "checkpoint round 12  (8 written, 0 failed, 2 skipped as diverged)" in result.output


@pytest.mark.parametrize("suffix", ["", "/", "/status", "/status/", "/metrics", "/metrics/", "/metrics?x=1"])
def test_status_cli_url_is_the_servers_base_url_or_one_of_its_endpoints(server, suffix, caplog):
    """`--url .../metrics`, the URL Prometheus scrapes, asked for .../metrics/status: a 404."""
    with caplog.at_level(logging.DEBUG, logger="p2pfl.daemon.status"):
        result = CliRunner().invoke(main, ["status", "--url", server.url + suffix])
    assert result.exit_code == 0 and "round 12 of 100" in result.output, result.output
    (request,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("status request")]
    assert '"GET /status' in request


def test_status_cli_url_may_have_a_path_before_the_endpoint(server):
    """A status server behind a proxy's path prefix: its /status is under that prefix."""
    result = CliRunner().invoke(main, ["status", "--url", server.url + "/node-a/metrics"])
    assert result.exit_code == 1 and f"{server.url}/node-a/status answered 404" in result.output


def test_status_cli_json_prints_the_document(server, tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"pid": 1, "url": server.url}))
    result = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == DOCUMENT


def test_status_cli_says_when_no_daemon_runs(tmp_path, server):
    result = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no daemon is running with this data dir" in result.output
    url = server.url
    server.stop()
    result = CliRunner().invoke(main, ["status", "--url", url, "--timeout", "2"])
    assert result.exit_code == 1 and "is the daemon running?" in result.output
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2 and "exactly one of --data-dir and --url" in result.output


@pytest.mark.parametrize(
    ("document", "reason"),
    [([1, 2], "a JSON list, not an object"), ({"peer_id": "x", "checkpoint": "x"}, "'str' object")],
)
def test_status_cli_names_an_answer_that_is_not_a_status_document(server, document, reason):
    """A URL of another service that answers JSON: `p2pfl status` died with an AttributeError."""
    server.state["document"] = document
    result = CliRunner().invoke(main, ["status", "--url", server.url])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "did not answer a p2pfl status document" in result.output and reason in result.output


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e308"])
def test_status_cli_refuses_a_timeout_a_socket_cannot_take(server, timeout):
    """Each raised from socket.settimeout (a traceback), or for 0 reported a running node as down."""
    result = CliRunner().invoke(main, ["status", "--url", server.url, "--timeout", timeout])
    assert result.exit_code == 2 and "Invalid value for '--timeout'" in result.output, result.output


def test_a_diverged_model_gives_null_not_nan(server):
    nan, inf = float("nan"), float("inf")
    server.state["document"] = {
        **DOCUMENT,
        "loss": nan,
        "history": [{"round": 12, "accuracy": 0.1, "loss": inf}],
        "reputation": {"12D3KooWPeerA": -inf},
    }
    code, _, body = get(server.url + "/status")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    document = json.loads(body, parse_constant=refuse)  # strict JSON, as browsers and jq read it
    assert code == 200 and document["loss"] is None and document["accuracy"] == 0.91
    assert document["history"] == [{"round": 12, "accuracy": 0.1, "loss": None}]
    assert document["reputation"] == {"12D3KooWPeerA": None}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "cannot read"),
        (b"\xff\xfe", "cannot read"),
        (b"[1, 2]", "is not a daemon's status file: it holds no JSON object"),
        (b'{"pid": 7, "url": 5}', "is not a daemon's status file: url 5 is not an http:// URL"),
        (b'{"pid": 7, "url": "nonsense"}', "is not a daemon's status file: url 'nonsense' is not"),
    ],
)
def test_status_cli_names_a_malformed_status_file(tmp_path, content, reason):
    (tmp_path / "status.json").write_bytes(content)
    result = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ") and str(tmp_path / "status.json") in line and reason in line


def test_status_cli_refuses_a_url_that_is_not_http():
    result = CliRunner().invoke(main, ["status", "--url", "localhost:9464"])
    assert result.exit_code == 2 and "Invalid value for '--url': 'localhost:9464' is not an http:// URL" in (
        result.output
    )


@needs_ipv6
def test_the_status_server_serves_on_the_ipv6_loopback():
    """ThreadingHTTPServer binds AF_INET unless told, so "::1" used to be refused at start."""
    server = StatusServer(lambda: DOCUMENT, host="::1", port=0).start()
    try:
        assert server.host == "::1" and server.url == f"http://[::1]:{server.port}"
        code, _, body = get(server.url + "/status")
        assert code == 200 and json.loads(body) == DOCUMENT
        result = CliRunner().invoke(main, ["status", "--url", server.url])
        assert result.exit_code == 0 and "round 12 of 100" in result.output, result.output
    finally:
        server.stop()


@needs_ipv6
def test_a_daemon_with_an_ipv6_status_host_serves_status_there(tmp_path):
    config = node_config(tmp_path, rounds=2, period=0.2, status={"host": "::1", "port": 0})

    async def run() -> tuple[str, CliResult]:
        with trio.fail_after(60):
            async with open_node(config) as handle:
                await handle.wait_for_round(1)
                cli = CliRunner()
                result = await trio.to_thread.run_sync(
                    cli.invoke, main, ["status", "--data-dir", str(tmp_path)]
                )
                return handle.status_url, result

    url, result = trio.run(run)
    assert url is not None and url.startswith("http://[::1]:")
    assert result.exit_code == 0 and "12D3KooW" in result.output, result.output
