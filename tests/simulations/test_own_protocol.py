"""A round protocol of one's own, named `module:attribute` in a config or scenario file."""

import textwrap

import pytest

from p2pfl.errors import ConfigError
from simulations.config import EmulationConfig
from simulations.emulator import run_emulation

OWN_PROTOCOLS = '''
from dataclasses import dataclass

from gossip.protocol import RoundProtocol

SEEDS = []


@dataclass(frozen=True)
class TrainAlone(RoundProtocol):
    """Trains `rounds` rounds and talks to nobody."""

    rounds: int
    period: float
    seed: int
    steps_per_round: int = 1

    def __post_init__(self):
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        SEEDS.append(self.seed)

    async def run(self, transport, learning):
        for round_ in range(1, self.rounds + 1):
            for _ in range(self.steps_per_round):
                await learning.train()
            await learning.finish_round(round_)


def not_a_protocol(**params):
    return params
'''


@pytest.fixture(autouse=True)
def own_protocols(tmp_path, monkeypatch):
    (tmp_path / "own_protocols.py").write_text(textwrap.dedent(OWN_PROTOCOLS))
    monkeypatch.syspath_prepend(str(tmp_path))


def config(**fields) -> EmulationConfig:
    defaults = {
        "nodes": 4,
        "topology": "ring",
        "rounds": 3,
        "local_steps": 2,
        "protocol": "own_protocols:TrainAlone",
    }
    return EmulationConfig(**{**defaults, **fields})


def test_each_node_runs_its_own_instance_with_a_seed_of_its_own():
    import own_protocols

    own_protocols.SEEDS.clear()
    result = run_emulation(config(protocol_params={"steps_per_round": 2}))
    assert [row.round for row in result.rounds] == [1, 2, 3]
    assert result.messages_sent == 0  # it talks to nobody
    node_seeds = own_protocols.SEEDS[1:]  # the first was the config's check, with seed 0
    assert len(node_seeds) == 4 and len(set(node_seeds)) == 4
    assert result.node_rounds == 12


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "no_such_module:P"}, "protocol: cannot import 'no_such_module'"),
        ({"protocol": "gossipp"}, "or module:attribute for your own, got 'gossipp'"),
        (
            {"protocol_params": {"steps_per_round": 0}},
            r"protocol 'own_protocols:TrainAlone': steps_per_round must",
        ),
        ({"protocol_params": {"colour": 1}}, "unexpected keyword argument 'colour'"),
        (
            {"protocol": "own_protocols:not_a_protocol"},
            r"built an object of type dict, not a gossip\.protocol\.Round",
        ),
    ],
)
def test_a_protocol_of_ones_own_is_checked_with_the_config(fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)
