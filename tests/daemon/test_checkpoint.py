"""Checkpoints: atomic round trips, clear errors on bad files, and what a node does with one."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import trio
from daemon_helpers import node_config

from p2pfl.aggregation.base import Contribution
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.daemon.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    DivergedModel,
    load_checkpoint,
    save_checkpoint,
)
from p2pfl.daemon.metrics import render_metrics
from p2pfl.daemon.runner import NodeHandle, _restore
from p2pfl.daemon.task import build_learner
from p2pfl.node import RoundRecord


def sample(round_: int = 7) -> Checkpoint:
    rng = np.random.default_rng(round_)
    return Checkpoint(
        round=round_,
        tensors={
            "0.weight": rng.standard_normal((4, 3), dtype=np.float32),
            "0.bias": rng.standard_normal(4, dtype=np.float32),
            "steps": np.arange(2, dtype=np.int64),
        },
        protocol="gossip",
        protocol_state={"round": round_},
        info={"accuracy": 0.9, "peer_id": "p"},
    )


def test_round_trip_keeps_tensors_round_and_state(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample())
    loaded = load_checkpoint(path)
    assert loaded is not None and loaded.round == 7 and loaded.protocol == "gossip"
    assert list(loaded.tensors) == ["0.weight", "0.bias", "steps"]
    for name, array in sample().tensors.items():
        assert loaded.tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.tensors[name], array)
    assert loaded.protocol_state == {"round": 7}
    assert loaded.info["accuracy"] == 0.9 and "saved_at" in loaded.info


def test_saving_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample(1))
    save_checkpoint(path, sample(2))
    assert load_checkpoint(path).round == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    assert (path.stat().st_mode & 0o777) == 0o600


def test_no_file_is_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE) is None


def test_a_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is unreadable"):
        load_checkpoint(path)


def test_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}") as refused:
        load_checkpoint(path)
    assert "not a zip of arrays" in str(refused.value) and "pickle" not in str(refused.value)


def test_a_flipped_byte_fails_the_zip_crc(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("tensor.0.weight.npy")
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # inside the array's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_an_npz_without_our_metadata_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    with path.open("wb") as file:
        np.savez(file, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="no metadata"):
        load_checkpoint(path)


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    with path.open("wb") as file:
        np.savez(file, meta=np.frombuffer(b"{}", dtype=np.uint8), evil=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_a_node_resumes_its_model_and_round(tmp_path):
    config = node_config(tmp_path)
    trained = build_learner(config)
    trained.train(steps=5)
    save_checkpoint(
        tmp_path / CHECKPOINT_FILE,
        Checkpoint(round=12, tensors=trained.state().to_numpy(), protocol="gossip"),
    )
    fresh = build_learner(config)
    restored = _restore(config, fresh)
    assert restored is not None and restored.round == 12
    assert fresh.state().flat.equal(trained.state().flat)


def test_a_corrupt_checkpoint_refuses_to_start_by_default(tmp_path):
    config = node_config(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r'checkpoint\.on_corrupt = "fresh"'):
        _restore(config, build_learner(config))
    assert (tmp_path / CHECKPOINT_FILE).exists()  # left for the operator


def test_a_checkpoint_of_another_model_refuses_to_start(tmp_path):
    save_checkpoint(tmp_path / CHECKPOINT_FILE, sample())
    config = node_config(tmp_path)
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        _restore(config, build_learner(config))


def test_on_corrupt_fresh_moves_the_file_aside_and_starts_over(tmp_path, caplog):
    config = node_config(tmp_path, checkpoint={"on_corrupt": "fresh"})
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert _restore(config, build_learner(config)) is None
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    (moved,) = tmp_path.glob(f"{CHECKPOINT_FILE}.bad-*")
    assert moved.read_bytes() == b"garbage"
    assert "unusable checkpoint moved aside" in caplog.text


def diverged(round_: int) -> Checkpoint:
    good = sample(round_)
    tensors = {**good.tensors, "0.bias": np.array([0.0, np.nan, np.inf, 1.0], dtype=np.float32)}
    return dataclasses.replace(good, tensors=tensors)


def test_a_diverged_model_is_not_written_over_the_last_good_checkpoint(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample(4))
    with pytest.raises(CheckpointError, match=r"round 5 not written .*tensor '0\.bias' has NaN or infinite"):
        save_checkpoint(path, diverged(5))
    assert load_checkpoint(path).round == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def test_a_checkpoint_holding_nan_is_refused_as_such_not_as_another_model(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    config = node_config(tmp_path)
    tensors = build_learner(config).state().to_numpy()
    tensors["0.weight"] = np.full_like(tensors["0.weight"], np.nan)
    save_checkpoint(path, Checkpoint(round=3, tensors={}, protocol="gossip"))  # metadata to reuse
    with np.load(path) as npz:
        meta = json.loads(npz["meta"].tobytes())
    meta["tensors"] = list(tensors)
    with path.open("wb") as file:  # as an older p2pfl, which did not check, wrote it
        np.savez(
            file,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **{f"tensor.{name}": array for name, array in tensors.items()},
        )
    with pytest.raises(CheckpointError) as info:
        _restore(config, build_learner(config))
    message = f"checkpoint {path} holds a diverged model: tensor '0.weight' has NaN or infinite values"
    assert message in str(info.value)
    assert "does not fit" not in str(info.value)


def test_the_daemon_counts_a_diverged_model_as_a_skipped_checkpoint_and_keeps_the_last(tmp_path, caplog):
    config = node_config(tmp_path)
    handle = NodeHandle(config, transport=None, learner=build_learner(config), restored=None)
    trio.run(handle._save, sample(4))
    with caplog.at_level(logging.WARNING):
        trio.run(handle._save, diverged(5))
    counts = (handle.checkpoint_writes, handle.checkpoint_skipped, handle.checkpoint_failures)
    assert counts == (1, 1, 0) and handle.checkpoint_round == 4
    assert "tensor '0.bias' has NaN or infinite values" in handle.checkpoint_error
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.getMessage().startswith(
        "diverged checkpoint not saved"
    )
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).round == 4


def test_a_stop_after_the_last_round_does_not_try_its_diverged_model_again(tmp_path):
    config = node_config(tmp_path)
    handle = NodeHandle(config, transport=None, learner=build_learner(config), restored=None)
    handle.node = SimpleNamespace(history=[RoundRecord(5, 0.0, None, None, 0, 0)])
    trio.run(handle._save, sample(4))
    trio.run(handle._save, diverged(5))
    assert handle._stop_checkpoint_due()  # the protocol runs on: the model may still change
    handle._done.set()
    assert not handle._stop_checkpoint_due()  # refused once as diverged, and it cannot change now
    handle.node.history.append(RoundRecord(6, 1.0, None, None, 0, 0))
    assert handle._stop_checkpoint_due()  # a later round than the refused one is written at stop


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_a_model_whose_evaluated_loss_is_not_finite_is_not_written(tmp_path, loss):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample(4))
    finite_but_useless = dataclasses.replace(sample(5), info={"accuracy": 0.1, "loss": loss})
    with pytest.raises(DivergedModel, match=rf"round 5 not written .*its evaluated loss is {loss}"):
        save_checkpoint(path, finite_but_useless)
    assert load_checkpoint(path).round == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def test_a_checkpoint_with_a_non_finite_loss_is_refused_on_load(tmp_path):
    """As an older p2pfl wrote it: finite tensors, a NaN loss (json writes NaN and reads it back)."""
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, sample(3))
    with np.load(path) as npz:
        arrays = dict(npz)
    meta = json.loads(arrays.pop("meta").tobytes())
    meta["info"]["loss"] = float("nan")
    with path.open("wb") as file:
        np.savez(file, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    with pytest.raises(CheckpointError, match="holds a diverged model: its evaluated loss is nan"):
        load_checkpoint(path)


def test_a_huge_peer_model_merged_by_fedavg_does_not_replace_the_last_good_checkpoint(tmp_path, caplog):
    """QA's case: a peer sends finite weights of 1e30; FedAvg merges them into this node's model,
    which then evaluates to a non-finite loss. Its tensors are finite, so only the loss shows it."""
    config = node_config(tmp_path)
    learner = build_learner(config)
    transport = SimpleNamespace(peer_id="12D3KooWSelf")
    handle = NodeHandle(config, transport=transport, learner=learner, restored=None)
    good = learner.evaluate()
    handle.node = SimpleNamespace(history=[RoundRecord(4, 0.0, good.accuracy, good.loss, 0, 0)])
    trio.run(handle._save, handle._snapshot(4))
    own = learner.state()
    huge = own.from_numpy({name: np.full_like(a, 1e30) for name, a in own.to_numpy().items()})
    fedavg = build_aggregator("fedavg")
    learner.load(fedavg.aggregate(Contribution("self", own), [Contribution("12D3KooWPeer", huge)]))
    merged = learner.evaluate()
    assert all(np.isfinite(a).all() for a in learner.state().to_numpy().values())
    assert not math.isfinite(merged.loss)
    handle.node.history.append(RoundRecord(5, 1.0, merged.accuracy, merged.loss, 0, 0))
    with caplog.at_level(logging.WARNING):
        trio.run(handle._save, handle._snapshot(5))
    restored = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert restored.round == 4 and restored.info["loss"] == pytest.approx(good.loss)
    assert (handle.checkpoint_writes, handle.checkpoint_skipped, handle.checkpoint_round) == (1, 1, 4)
    assert "diverged checkpoint not saved; keeping the last good one" in caplog.text
    assert "its evaluated loss is" in handle.checkpoint_error
    metrics = render_metrics({"checkpoint": {"skipped": handle.checkpoint_skipped}}).decode()
    assert "p2pfl_checkpoint_skipped_total 1.0" in metrics


def test_rounds_skipped_past_a_multiple_of_every_still_checkpoint(tmp_path):
    """A node that overruns its period skips rounds (gossip.rounds.RoundClock): with every = 3 and
    rounds 1, 4, 7, 10, ... no round is a multiple of 3, and no checkpoint was ever queued before
    the final one, so a crash lost the whole run. A round past a multiple is checkpointed."""
    config = node_config(tmp_path, checkpoint={"every": 3})
    transport = SimpleNamespace(peer_id="12D3KooWSelf", peers=lambda: [])
    handle = NodeHandle(config, transport=transport, learner=build_learner(config), restored=None)
    queued = []
    for round_ in (1, 4, 7, 10, 12, 13):
        handle.round_finished(None, RoundRecord(round_, 0.0, None, None, 0, 0))
        if handle._pending is not None:
            queued.append(handle._pending.round)
            handle._pending = None
    assert queued == [4, 7, 10, 12]
