"""Every field of `EmulationConfig` has a validation test: a bad value in a scenario file fails with a
`ConfigError` that names the file, the variant and the field, and says what is wrong.

Each bad file is `GOOD` (every field set to a valid value) with one row's keys replaced, so the row's
value is the only thing wrong with it. A new field needs a good value and at least one bad row.
"""

import re
import tomllib
from dataclasses import fields

import pytest

from p2pfl.errors import ConfigError
from simulations.config import EmulationConfig
from simulations.scenario import load_scenario

FIELDS = {f.name for f in fields(EmulationConfig)}

# TOML values, each valid and (but for resample_every, which a topology_file rules out) not the
# default. `{ring}` is a 6-node ring written next to the scenario file.
GOOD = {
    "nodes": "6",
    "topology": '"small_world"',
    "topology_params": "{ k = 2, p = 0.2 }",
    "topology_file": "'{ring}'",
    "resample_every": "0",
    "task": '"synthetic"',
    "task_params": "{ features = 8, classes = 4, samples_per_node = 16 }",
    "protocol": '"modest"',
    "protocol_params": "{ s = 3, join_fanout = 2 }",
    "churn": '[{ round = 2, action = "join", nodes = [5] }, { round = 3, action = "crash", fraction = 0.2 }]',
    "attack": '"sign_flip"',
    "attack_params": "{ scale = 2.0 }",
    "byzantine_fraction": "0.2",
    "stall_timeout": "100.0",
    "torch_threads": "2",
    "aggregation": '"trimmed_mean"',
    "aggregation_params": "{ f = 1 }",
    "init": '"independent"',
    "hidden": "[8, 4]",
    "activation": '"tanh"',
    "xavier": "true",
    "evaluate_every": "2",
    "rounds": "4",
    "partition": '"dirichlet"',
    "alpha": "0.3",
    "classes_per_node": "3",
    "local_steps": "2",
    "batch_size": "8",
    "lr": "0.1",
    "fanout": "2",
    "period": "2.0",
    "latency": "0.05",
    "bandwidth": "1e6",
    "loss": "0.1",
    "speed_sigma": "0.2",
    "consensus": "true",
    "record_nodes": "true",
    "batched_training": "false",
    "seconds_per_step": "0.002",
    "shards": "2",
    "seed": "7",
}

# (field, TOML replacing GOOD's keys in [base], text the error must contain besides the field's name).
# A row with [[variants]] puts its bad value in a variant instead.
# The digits_transfer task with its classes partition: the context of Bristle's own params.
TRANSFER = 'task = "digits_transfer"\npartition = "classes"\ntask_params = {}\n'
BAD = [
    # run size and schedule
    ("nodes", 'nodes = "many"', "nodes must be an integer, got 'many'"),
    ("nodes", "nodes = 1", "nodes must be >= 2, got 1"),
    ("rounds", "rounds = 2.5", "rounds must be an integer, got 2.5"),
    ("rounds", "rounds = 0", "rounds must be >= 1, got 0"),
    ("rounds", "rounds = true", "rounds must be an integer, got true"),  # not read as 1
    ("rounds", 'rounds = "3"', "rounds must be an integer, got '3'"),  # not read as 3
    ("evaluate_every", "evaluate_every = 0", "evaluate_every must be >= 1 and divide rounds, got 0"),
    ("evaluate_every", "evaluate_every = 3", "evaluate_every must be >= 1 and divide rounds, got 3"),
    ("seed", 'seed = "seven"', "seed must be an integer, got 'seven'"),
    ("seed", "seed = -1", "seed must be >= 0, got -1"),  # numpy's SeedSequence would refuse it later
    ("torch_threads", "torch_threads = 0", "torch_threads must be >= 1, got 0"),
    ("shards", "shards = 0", "shards must be between 1 and nodes (6), got 0"),
    ("shards", "shards = 7", "shards must be between 1 and nodes (6), got 7"),
    ("shards", 'shards = "two"', "shards must be an integer, got 'two'"),
    ("stall_timeout", 'stall_timeout = "long"', "stall_timeout must be a number, got 'long'"),
    ("stall_timeout", "stall_timeout = 0", "stall_timeout must be > 0 and finite, got 0.0"),
    ("stall_timeout", "stall_timeout = inf", "stall_timeout must be > 0 and finite, got inf"),
    # topology
    ("topology", "topology = 3", "topology must be a string, got 3"),
    ("topology", 'topology = "hypercube"', "topology: unknown name 'hypercube'"),
    ("topology_params", 'topology_params = "dense"', "topology_params: Input should be a valid dictionary"),
    (
        "topology_params",
        "topology_params = { degree = 4 }",  # random_regular's, not small_world's
        "topology_params: ['degree'] not accepted by topology 'small_world'; it accepts ['k', 'p']",
    ),
    ("topology_params", 'topology_params = { k = "two" }', "topology_params.k must be a number, got 'two'"),
    ("topology_params", "topology_params = { k = true, p = 0.2 }", "topology_params.k must be a number"),
    ("topology_file", "topology_file = 3", "topology_file must be a string, got 3"),
    ("topology_file", 'topology_file = "missing.graphml"', "/missing.graphml: [Errno 2] No such"),
    ("topology_file", "nodes = 7", "topology_file"),  # the ring file has 6 nodes
    ("resample_every", 'resample_every = "often"', "resample_every must be an integer, got 'often'"),
    ("resample_every", "resample_every = -1", "resample_every must be >= 0, got -1"),
    ("resample_every", "resample_every = 2", "resample_every needs a clock-driven protocol and a named"),
    # task, data and model
    ("task", "task = 1", "task must be a string, got 1"),
    ("task", 'task = "mnist"', "or module:attribute for your own, got 'mnist'"),
    (
        "task",
        'task = "no_such_module:mnist"',
        "task: cannot import 'no_such_module' for 'no_such_module:mnist'",
    ),
    ("task_params", 'task_params = "big"', "task_params: Input should be a valid dictionary"),
    ("task_params", "task_params = { colour = 1 }", "synthetic_task() got an unexpected keyword argument"),
    ("task_params", "task_params = { features = 0 }", "task_params: synthetic task needs features >= 1"),
    ("task_params", 'task_params = { features = "x" }', "task_params: synthetic features must be an integer"),
    ("task_params", "task_params = { classes = 2.5 }", "synthetic classes must be an integer, got 2.5"),
    ("task_params", "task_params = { separation = inf }", "synthetic separation must be > 0 and finite"),
    ("task_params", "task_params = { test_samples_per_class = 0 }", "test_samples_per_class must be >= 1"),
    ("task_params", 'task = "digits"\ntask_params = { features = 8 }', "task_params: the digits task takes"),
    ("task_params", TRANSFER.replace("{}", "{ depth = 2 }"), "task_params: TransferParams.__init__() got an"),
    ("partition", 'partition = "skewed"', "partition must be 'iid', 'dirichlet' or 'classes', got 'skewed'"),
    ("partition", 'partition = "classes"', "partition 'classes' needs task 'digits_transfer'"),
    ("alpha", 'alpha = "low"', "alpha must be a number, got 'low'"),
    ("alpha", "alpha = 0", "alpha must be > 0 and finite, got 0.0"),
    ("alpha", "alpha = inf", "alpha must be > 0 and finite, got inf"),
    ("classes_per_node", "classes_per_node = 0", "classes_per_node must be an integer in [1, 10], got 0"),
    ("classes_per_node", "classes_per_node = 11", "classes_per_node must be an integer in [1, 10], got 11"),
    ("init", "init = true", "init must be a string, got true"),
    ("init", 'init = "random"', "init must be 'shared' or 'independent', got 'random'"),
    ("hidden", "hidden = 32", "hidden must be a list, got 32"),
    ("hidden", "hidden = [8, 1.5]", "hidden[1] must be an integer, got 1.5"),
    ("hidden", "hidden = [8, 0]", "hidden: layer sizes must be >= 1, got [8, 0]"),
    ("activation", "activation = 1", "activation must be a string, got 1"),
    ("activation", 'activation = "sigmoid"', "activation: unknown 'sigmoid'; choose one of ['relu', 'tanh']"),
    # The digits task builds its model only when run; the name is checked on load all the same.
    ("activation", 'task = "digits"\ntask_params = {}\nactivation = "gelu"', "activation: unknown 'gelu'"),
    # No conversions: "yes" and 1 are not true, "3" is not 3 (pydantic's lax mode would convert).
    ("xavier", 'xavier = "maybe"', "xavier must be true or false, got 'maybe'"),
    ("xavier", "xavier = [true]", "xavier must be true or false, got [true]"),
    ("xavier", "xavier = 1", "xavier must be true or false, got 1"),
    # training
    ("local_steps", "local_steps = 0", "local_steps must be >= 1, got 0"),
    ("batch_size", 'batch_size = "all"', "batch_size must be an integer, got 'all'"),
    ("batch_size", '[[variants]]\nname = "ok"\n[[variants]]\nname = "big"\nbatch_size = 0', "(big): batch"),
    ("lr", 'lr = "fast"', "lr must be a number, got 'fast'"),
    ("lr", '[[variants]]\nname = "fast"\nlr = -0.1', "variants[0] (fast): lr must be > 0 and finite"),
    ("lr", "lr = nan", "lr must be > 0 and finite, got nan"),
    ("lr", "lr = inf", "lr must be > 0 and finite, got inf"),
    ("lr", "lr = true", "lr must be a number, got true"),
    # protocol
    ("protocol", "protocol = 2", "protocol must be a string, got 2"),
    ("protocol", 'protocol = "flood"', "protocol must be one of ['dpsgd', 'fl', 'gossip', 'modest'] or"),
    ("protocol", 'protocol = "no_such_module:Flood"', "protocol: cannot import 'no_such_module'"),
    ("protocol_params", "protocol_params = []", "protocol_params: Input should be a valid dictionary"),
    ("protocol_params", "protocol_params = { colour = 1 }", "protocol_params: ['colour'] not accepted"),
    ("protocol_params", "protocol_params = { s = 0 }", "protocol_params: s must be an int >= 1, got 0"),
    ("protocol_params", "protocol_params = { join_fanout = 0 }", "protocol_params: join_fanout must be"),
    ("protocol_params", 'protocol = "fl"\nchurn = []', "protocol_params: ['join_fanout'] not accepted by"),
    ("fanout", "fanout = 0", "fanout must be >= 1, got 0"),
    ("period", "period = 0", "period must be > 0 and finite, got 0.0"),
    ("period", "period = inf", "period must be > 0 and finite, got inf"),
    (
        "period",  # a clock-driven protocol's round must fit training plus latency
        'protocol = "dpsgd"\nprotocol_params = {}\nchurn = []\nperiod = 0.05',
        "period (0.05 s) must exceed training time plus latency (0.054 s)",
    ),
    # churn: the events are `ChurnEvent`s
    ("churn", 'churn = "often"', "churn: Input should be a valid tuple"),
    ("churn", "churn = [{ round = 1 }]", "churn.0.action: Field required"),
    ("churn", 'churn = [{ round = 1, action = "explode" }]', "churn.0.action: Input should be 'crash',"),
    ("churn", 'churn = [{ round = 1, action = "crash", when = 2 }]', "churn.0.when: Unexpected keyword"),
    ("churn", 'churn = [{ round = -1, action = "crash" }]', "churn.0: churn.round must be >= 0, got -1"),
    ("churn", 'churn = [{ round = 1, action = "leave", fraction = 2 }]', "churn.fraction must be in [0, 1]"),
    ("churn", 'churn = [{ round = 1, action = "heal", nodes = [1] }]', "churn: heal takes no fraction or"),
    ("churn", 'churn = [{ round = 1, action = "crash", nodes = [6] }]', "nodes [6] are not in [0, 6)"),
    ("churn", 'churn = [{ round = 1, action = "crash", nodes = [3, 3] }]', "nodes [3] are listed more than"),
    ("churn", 'churn = [{ round = true, action = "crash" }]', "churn.0: round must be an integer, got true"),
    ("churn", 'churn = [{ round = 1, action = "crash", nodes = ["1"] }]', "churn.0: nodes[0] must be an"),
    ("churn", 'churn = [{ round = 5, action = "crash", fraction = 0.2 }]', "after the last round (4)"),
    # GOOD's churn has a join, which only MoDeST supports
    ("churn", 'protocol = "gossip"\nprotocol_params = {}', "churn: join is supported with protocol 'modest'"),
    # Byzantine nodes
    ("attack", "attack = []", "attack must be a string, got []"),
    ("attack", 'attack = "nuke"', "attack: unknown attack 'nuke'; choose one of"),
    ("attack", 'attack = "no_such_module:Nuke"', "attack: cannot import 'no_such_module'"),
    ("attack", 'attack = "math:pi"', "attack: 'math:pi' is not a class or function to build with"),
    ("attack_params", "attack_params = 1", "attack_params: Input should be a valid dictionary"),
    ("attack_params", "attack_params = { colour = 1 }", "unexpected keyword argument 'colour'"),
    ("attack_params", "attack_params = { scale = -1 }", "attack_params: attack 'sign_flip': SignFlip scale"),
    ("byzantine_fraction", 'byzantine_fraction = "some"', "byzantine_fraction must be a number, got 'some'"),
    ("byzantine_fraction", "byzantine_fraction = 1.0", "byzantine_fraction must be in [0, 1), got 1.0"),
    # aggregation
    ("aggregation", "aggregation = 3", "aggregation must be a string, got 3"),
    ("aggregation", 'aggregation = "mean"', "aggregation: unknown rule 'mean'; choose one of ['bristle',"),
    ("aggregation", 'aggregation = "bristle"', "aggregation 'bristle' needs task 'digits_transfer'"),
    ("aggregation", 'aggregation = "no_such_module:Rule"', "aggregation: cannot import 'no_such_module'"),
    (
        "aggregation",
        'aggregation = "collections:OrderedDict"\naggregation_params = {}',
        "'collections:OrderedDict': built an object of type OrderedDict, not a p2pfl.aggregation.base.",
    ),
    ("aggregation_params", "aggregation_params = 0.5", "aggregation_params: Input should be a valid dict"),
    ("aggregation_params", "aggregation_params = { colour = 1 }", "unexpected keyword argument 'colour'"),
    ("aggregation_params", "aggregation_params = { f = -1 }", "trimmed_mean f must be an integer >= 0"),
    # vca and reputation take their values as written too: "false" is not false, true is not 1
    (
        "aggregation_params",
        'aggregation = "vca"\naggregation_params = { correct_biases = "false" }',
        "vca correct_biases must be true or false, got 'false'",
    ),
    (
        "aggregation_params",
        'aggregation = "vca"\naggregation_params = { self_weight = true }',
        "vca self_weight must be a number in [0, 1], got True",
    ),
    (
        "aggregation_params",
        'aggregation = "vca"\naggregation_params = { eps = "small" }',
        "vca eps must be a number in [0, inf), got 'small'",
    ),
    (
        "aggregation_params",  # not silently ignored
        'aggregation = "vca"\naggregation_params = { selection_params = { f = 1 } }',
        "selection_params need a selection",
    ),
    (
        "aggregation_params",
        'aggregation = "reputation"\naggregation_params = { decay = "0.5" }',
        "reputation decay must be a number in [0, 1), got '0.5'",
    ),
    (
        "aggregation_params",
        'aggregation = "reputation"\naggregation_params = { threshold = false }',
        "reputation threshold must be a number in [-1, 1], got False",
    ),
    (
        "aggregation_params",  # bristle takes its own, checked against the transfer task
        TRANSFER + 'aggregation = "bristle"\naggregation_params = { f = 1 }',
        "aggregation_params: ['f'] not accepted by aggregation 'bristle'",
    ),
    # network and compute
    ("latency", 'latency = "low"', "latency must be a number, got 'low'"),
    ("latency", "latency = -0.01", "latency must be >= 0 and finite, got -0.01"),
    ("latency", "latency = nan", "latency must be >= 0 and finite, got nan"),
    ("latency", "latency = inf", "latency must be >= 0 and finite, got inf"),
    ("bandwidth", 'bandwidth = "fast"', "bandwidth must be a number, got 'fast'"),
    ("bandwidth", "bandwidth = 0", "bandwidth must be > 0 bytes/s or None, got 0.0"),
    ("loss", "loss = 1.0", "loss must be in [0, 1), got 1.0"),
    ("loss", "loss = -0.1", "loss must be in [0, 1), got -0.1"),
    ("speed_sigma", "speed_sigma = -0.5", "speed_sigma must be >= 0 and finite, got -0.5"),
    ("speed_sigma", "speed_sigma = inf", "speed_sigma must be >= 0 and finite, got inf"),
    ("seconds_per_step", "seconds_per_step = -1", "seconds_per_step must be >= 0 and finite, got -1.0"),
    # what is recorded and how
    ("consensus", "consensus = [true]", "consensus must be true or false, got [true]"),
    ("record_nodes", "record_nodes = { on = true }", "record_nodes must be true or false, got {'on': true}"),
    ("record_nodes", '[[variants]]\nname = "traced"\nrecord_nodes = "maybe"', "[0] (traced): record_nodes"),
    ("batched_training", 'batched_training = "maybe"', "batched_training must be true or false, got 'maybe'"),
    ("batched_training", "batched_training = [true]", "batched_training must be true or false, got [true]"),
]


def scenario(tmp_path, row: str = "") -> str:
    """A scenario file's text: `GOOD` in [base] with `row`'s [base] keys replaced by `row`."""
    ring = tmp_path / "ring.edgelist"
    ring.write_text("".join(f"{i} {(i + 1) % 6}\n" for i in range(6)))
    replaced = tomllib.loads(row).keys()
    base = [f"{key} = {value}" for key, value in GOOD.items() if key not in replaced]
    return "\n".join(['name = "fields"', "[base]", *base, row, ""]).replace("{ring}", str(ring))


def write(tmp_path, text: str):
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_every_field_has_a_good_value_and_a_bad_row():
    assert set(GOOD) == FIELDS
    assert {row[0] for row in BAD} == FIELDS


def test_a_file_setting_every_field_to_a_good_value_loads(tmp_path):
    text = scenario(tmp_path)
    assert set(tomllib.loads(text)["base"]) == FIELDS
    (variant,) = load_scenario(write(tmp_path, text)).variants
    config = variant.config
    assert config.topology_file == str(tmp_path / "ring.edgelist")
    defaults = EmulationConfig()
    assert [f for f in FIELDS if getattr(config, f) == getattr(defaults, f)] == ["resample_every"]


@pytest.mark.parametrize(
    ("field", "row", "message"), BAD, ids=[f"{field}: {row}".replace("\n", "; ") for field, row, _ in BAD]
)
def test_a_bad_value_fails_naming_the_file_variant_and_field(tmp_path, field, row, message):
    path = write(tmp_path, scenario(tmp_path, row))
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    text = str(error.value)
    assert text.startswith(f"{path}: variants[")
    assert re.search(rf"\b{field}\b", text), f"{field} not named in {text!r}"
    assert message in text


def test_attack_params_need_an_attack(tmp_path):
    # Not a row: TOML cannot unset GOOD's attack.
    path = write(tmp_path, 'name = "x"\n[base]\nattack_params = { scale = 2.0 }\n')
    with pytest.raises(ConfigError, match=r"attack_params \['scale'\] need an attack"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("", "topology.degree: no 4-regular graph on 4 nodes"),  # the default topology
        ('topology = "random_regular"\ntopology_params = { degree = -2 }', "no -2-regular graph on 8"),
        ('topology = "small_world"\ntopology_params = { k = 2, p = 5 }', "topology.p must be a probability"),
        ('topology = "torus"\ntopology_params = { rows = 3 }', "topology.rows: 3 rows do not divide 8 nodes"),
        ('topology = "barabasi_albert"\ntopology_params = { m = 8 }', "topology.m must be in [1, n)"),
    ],
)
def test_topology_values_that_allow_no_graph_fail_on_load(tmp_path, base, message):
    # Not rows: GOOD's topology_file replaces the named topology, whose values then need not fit.
    nodes = 8 if base else 4
    path = write(tmp_path, f'name = "x"\n[base]\nnodes = {nodes}\n{base}\n[[variants]]\nname = "v"\n')
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    assert str(error.value).startswith(f"{path}: variants[0] (v): ") and message in str(error.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rounds", True, "rounds must be an integer, got true"),
        ("rounds", 2.5, "rounds must be an integer, got 2.5"),
        ("nodes", "4", "nodes must be an integer, got '4'"),
        ("lr", None, "lr must be a number, got None"),
        ("hidden", (8, True), r"hidden\[1\] must be an integer, got true"),
        ("churn", ({"round": 1, "action": "crash"},), "churn must be ChurnEvents"),
    ],
)
def test_python_configs_are_type_checked_too(field, value, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**{field: value})
