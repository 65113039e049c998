"""Prometheus metrics of a node, derived from its status document.

Metrics are not kept as separate counters: each scrape renders the same snapshot that /status shows
(one source of truth), through a `prometheus_client` collector on a private registry, so several
nodes in one process (embedding, tests) never share or clash in the global registry. Names follow
Prometheus conventions: ``p2pfl_`` prefix, counters end in ``_total``, sizes in bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# (status key, metric name without _total, help)
_COUNTERS = (
    ("bytes_out", "p2pfl_bytes_sent", "Bytes sent on the wire (encoded)."),
    ("bytes_in", "p2pfl_bytes_received", "Bytes received on the wire (encoded)."),
    ("messages_out", "p2pfl_messages_sent", "Messages sent."),
    ("messages_in", "p2pfl_messages_received", "Messages received."),
    ("messages_rejected", "p2pfl_messages_rejected", "Messages refused by the transport or protocol."),
    ("models_rejected", "p2pfl_models_rejected", "Received models that failed validation."),
)
_STATES = ("starting", "running", "done", "stopping")


class _StatusCollector:
    def __init__(self, status: Mapping[str, Any]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status
        info = InfoMetricFamily("p2pfl_node", "The node's identity and protocol.")
        info.add_metric(
            [],
            {
                "peer_id": str(s.get("peer_id", "")),
                "protocol": str(s.get("protocol", "")),
                "version": str(s.get("version", "")),
            },
        )
        yield info
        yield _gauge("p2pfl_round", "Last round this node completed.", s.get("round"))
        yield _gauge(
            "p2pfl_started_round", "First round of this run (> 1 after a resume).", s.get("started_round")
        )
        yield _gauge("p2pfl_accuracy", "Test accuracy at the last evaluation.", s.get("accuracy"))
        yield _gauge("p2pfl_loss", "Test loss at the last evaluation.", s.get("loss"))
        yield _gauge("p2pfl_peers", "Connected peers.", len(s.get("peers", ())))
        yield _gauge("p2pfl_banned_peers", "Peers banned now.", len(s.get("banned_peers", ())))
        yield _gauge("p2pfl_uptime_seconds", "Seconds since the daemon started.", s.get("uptime_s"))
        state = GaugeMetricFamily("p2pfl_state", "1 for the node's current state.", labels=["state"])
        for name in _STATES:
            state.add_metric([name], 1.0 if s.get("state") == name else 0.0)
        yield state
        for key, name, help_ in _COUNTERS:
            yield _counter(name, help_, s.get(key))
        libp2p = s.get("libp2p") or {}
        # Every counter the transport keeps (transfers, gossip, discovery...), under its own name.
        for key, value in sorted(libp2p.items()):
            if key != "rejected_by_reason" and _is_number(value):
                yield _counter(f"p2pfl_libp2p_{key}", f"libp2p transport counter {key}.", value)
        reasons = CounterMetricFamily(
            "p2pfl_libp2p_rejections", "Refused network input, by reason.", labels=["reason"]
        )
        for reason, count in sorted((libp2p.get("rejected_by_reason") or {}).items()):
            reasons.add_metric([reason], float(count))
        yield reasons
        checkpoint = s.get("checkpoint") or {}
        yield _gauge(
            "p2pfl_checkpoint_round",
            "Round of the last checkpoint written or loaded.",
            checkpoint.get("round"),
        )
        yield _counter("p2pfl_checkpoint_writes", "Checkpoints written.", checkpoint.get("writes"))
        yield _counter(
            "p2pfl_checkpoint_failures", "Checkpoint writes that failed.", checkpoint.get("failures")
        )
        yield _counter(
            "p2pfl_checkpoint_skipped",
            "Checkpoints not written because the model diverged (NaN or infinite values or loss).",
            checkpoint.get("skipped"),
        )


def _gauge(name: str, help_: str, value: object) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=_number(value))


def _counter(name: str, help_: str, value: object) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_, value=_number(value, default=0.0))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, *, default: float = math.nan) -> float:
    """Prometheus has no null: an unknown value (no evaluation yet) is NaN."""
    return float(value) if _is_number(value) else default  # type: ignore[arg-type]


def render_metrics(status: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of one status document."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry)
