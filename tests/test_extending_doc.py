"""docs/extending.md: its code blocks, put in one module, are parts the registries and the emulator
take by `module:attribute`, and work."""

import re
from pathlib import Path

import pytest
import torch

from p2pfl.aggregation import Contribution
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.attacks.registry import build_attack
from p2pfl.model_state import Layout, ModelState
from simulations import EmulationConfig, run_emulation

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def doc_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extending")
    (folder / "doc_parts.py").write_text("\n\n".join(blocks(EXTENDING, "python")))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield "doc_parts"


def test_the_doc_shows_a_rule_an_attack_a_task_and_a_protocol():
    assert len(blocks(EXTENDING, "python")) == 4


def test_the_rule_clips_what_it_receives(doc_parts):
    rule = build_aggregator("doc_parts:ClippedMean", tau=1.0)
    layout = Layout.of({"w": torch.zeros(2)})
    own = Contribution("me", ModelState(layout, torch.zeros(2)), 1.0)
    far = Contribution("far", ModelState(layout, torch.tensor([30.0, 40.0])), 1.0)  # 50 away
    merged = rule.aggregate(own, [far])
    assert torch.allclose(merged.flat, torch.tensor([0.3, 0.4]))  # clipped to norm 1, then halved


def test_the_attack_sends_the_shrunk_honest_mean(doc_parts):
    attack = build_attack("doc_parts:PullToZero", factor=0.5)
    honest = torch.tensor([[2.0, 4.0], [4.0, 8.0]])
    crafted = attack.craft(torch.zeros(2), honest, round=1, generator=torch.Generator())
    assert crafted.tolist() == [1.5, 3.0]


def test_the_task_protocol_rule_and_attack_run_in_an_emulation(doc_parts):
    base = {"nodes": 6, "topology": "ring", "rounds": 8, "local_steps": 10, "lr": 0.2}
    base["task"] = "doc_parts:rings_task"
    alone = run_emulation(EmulationConfig(**base, protocol="doc_parts:LocalOnly"))
    assert alone.messages_sent == 0 and [r.round for r in alone.rounds] == list(range(1, 9))

    attacked = {**base, "protocol": "dpsgd", "attack": "doc_parts:PullToZero", "byzantine_fraction": 0.34}
    averaged = run_emulation(EmulationConfig(**attacked))
    clipped = run_emulation(
        EmulationConfig(**attacked, aggregation="doc_parts:ClippedMean", aggregation_params={"tau": 0.1})
    )
    assert averaged.final_mean_accuracy < 0.6 < 0.8 < clipped.final_mean_accuracy  # 0.50 and 0.90
