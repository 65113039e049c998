"""Counters specific to the libp2p transport, beside the shared `TrafficStats`.

Every refusal of input from the network bumps a counter here (and logs a line), so an operator can
tell "no models arrive" from "models arrive and are refused" and see why, without reading logs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Libp2pStats"]


@dataclass(slots=True)
class Libp2pStats:
    """Model-plane transfers, control-plane (gossip) messages, discovery, bans and inbound
    connections, by outcome."""

    transfers_sent: int = 0
    transfers_failed: int = 0  # outbound: timed out, reset, refused by the peer
    transfers_received: int = 0
    transfers_rejected: int = 0  # inbound: refused or broken off, see `rejected_by_reason`
    peers_banned: int = 0  # bans imposed on misbehaving peers (see `transport.penalties`)
    gossip_published: int = 0
    gossip_received: int = 0
    gossip_rejected: int = 0  # failed our topic validator (not relayed, not delivered)
    discovery_rounds: int = 0
    discovery_dials: int = 0  # dials to peers learned by discovery
    discovery_dials_failed: int = 0
    rendezvous_requests_failed: int = 0  # our register/discover requests that failed or were refused
    rendezvous_served: int = 0  # requests answered by our rendezvous point
    rendezvous_rejected: int = 0  # requests it refused or streams it cut off, see `rejected_by_reason`
    inbound_rejected: int = 0  # inbound connections refused (full) or closed mid-handshake, by reason
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    def reject_transfer(self, reason: str) -> None:
        self.transfers_rejected += 1
        self.rejected_by_reason[f"transfer:{reason}"] += 1

    def reject_gossip(self, reason: str) -> None:
        self.gossip_rejected += 1
        self.rejected_by_reason[f"gossip:{reason}"] += 1

    def reject_inbound(self, reason: str) -> None:
        self.inbound_rejected += 1
        self.rejected_by_reason[f"inbound:{reason}"] += 1

    def reject_rendezvous(self, reason: str) -> None:
        self.rendezvous_rejected += 1
        self.rejected_by_reason[f"rendezvous:{reason}"] += 1
