"""Daemon logging: every line in the configured format, py-libp2p's included."""

from __future__ import annotations

import io
import json
import logging

import pytest

from p2pfl.daemon.logs import configure_logging

libp2p_logging = pytest.importorskip("libp2p.utils.logging")


@pytest.fixture
def restore_logging(monkeypatch):
    """Put the root logger and libp2p's own logging setup back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    libp2p_logging.setup_logging()  # what importing libp2p did: its loggers back to its defaults


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_libp2p_warnings_come_out_once_as_json(restore_logging, capsys):
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("libp2p.network.swarm").warning("dial to %s failed", "peer")
    lines = json_lines(out)
    assert [(line["logger"], line["level"], line["msg"]) for line in lines] == [
        ("libp2p.network.swarm", "warning", "dial to peer failed")
    ]
    assert capsys.readouterr().err == ""  # nothing through logging's last-resort handler


def test_libp2p_debug_env_sets_levels_but_not_the_format(restore_logging, monkeypatch, tmp_path, capsys):
    # LIBP2P_DEBUG gives libp2p's loggers their own stderr and file handlers (libp2p's format).
    monkeypatch.setenv("LIBP2P_DEBUG", "network.swarm:DEBUG")
    monkeypatch.setenv("LIBP2P_DEBUG_FILE", str(tmp_path / "libp2p.log"))
    libp2p_logging.setup_logging()
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("libp2p.network.swarm").debug("dialing")
    logging.getLogger("libp2p.identity").info("not at info: libp2p stays at warning")
    assert [(line["logger"], line["level"], line["msg"]) for line in json_lines(out)] == [
        ("libp2p.network.swarm", "debug", "dialing")
    ]
    assert capsys.readouterr().err == ""


def test_a_nan_in_a_json_log_line_is_null(restore_logging):
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("p2pfl.test").info("round finished", extra={"loss": float("nan"), "round": 3})

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    (line,) = [json.loads(text, parse_constant=refuse) for text in out.getvalue().splitlines()]
    assert (line["msg"], line["loss"], line["round"]) == ("round finished", None, 3)
