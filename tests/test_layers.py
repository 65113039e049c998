"""The layers import one way: simulations -> p2pfl -> gossip -> transport, and gossip never imports torch."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["transport", "gossip", "p2pfl", "simulations"]


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    for path in files:
        wrong = imported_top_levels(path) & above
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)} from a higher layer"


@pytest.mark.parametrize("layer", ["transport", "gossip"])
def test_transport_and_gossip_never_import_torch(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        assert "torch" not in imported_top_levels(path), path.relative_to(ROOT)
