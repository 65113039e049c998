"""Payload codecs: error bounds, error feedback, compression ratios, and refusal of bad payloads."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transport import codec
from transport.compression import (
    CODECS,
    FORMAT_VERSION,
    CompressedPayload,
    EncodedTensor,
    ErrorFeedback,
    decode_payload,
    encode_payload,
)
from transport.errors import DecodeError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def float_arrays(max_abs: float = 1e4, max_side: int = 20):
    elements = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, width=32)
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side)
    return hnp.arrays(np.float32, shapes, elements=elements)


def wire(payload: CompressedPayload) -> CompressedPayload:
    """The payload as a receiver gets it: through the message codec (read-only tensors)."""
    got = codec.decode(codec.encode(payload))
    assert isinstance(got, CompressedPayload)
    return got


def roundtrip(x: np.ndarray, name: str, **params) -> np.ndarray:
    out = decode_payload(wire(encode_payload({"x": x}, name, **params)))["x"]
    assert out.dtype == np.float32 and out.shape == x.shape and out.flags.writeable
    return out


# --- round trips and error bounds ----------------------------------------------------------------


@SETTINGS
@given(x=float_arrays())
def test_fp32_is_exact(x):
    np.testing.assert_array_equal(roundtrip(x, "fp32"), x)


@SETTINGS
@given(x=float_arrays(max_abs=6e4))
def test_fp16_relative_error_is_at_most_half_an_ulp(x):
    out = roundtrip(x, "fp16")
    # 2^-11 relative in fp16's normal range; below it, absolute half-spacing of subnormals (2^-25).
    assert np.all(np.abs(out - x) <= 2.0**-11 * np.abs(x) + 2.0**-25)


def test_fp16_clips_instead_of_overflowing_to_inf():
    out = roundtrip(np.array([1e6, -1e6, 3.0], dtype=np.float32), "fp16")
    np.testing.assert_array_equal(out, [65504.0, -65504.0, 3.0])


@SETTINGS
@given(x=float_arrays(max_abs=1e6, max_side=30), block=st.sampled_from([1, 7, 64, 256]))
def test_int8_error_is_at_most_half_the_block_scale(x, block):
    payload = encode_payload({"x": x}, "int8", block=block)
    encoded = payload.tensors["x"]
    out = decode_payload(wire(payload))["x"]
    flat = x.reshape(-1)
    scales = np.repeat(encoded.scales, block)[: flat.size]
    padded = np.zeros(-(-flat.size // block) * block, dtype=np.float32)
    padded[: flat.size] = np.abs(flat)
    absmax = padded.reshape(-1, block).max(axis=1)
    np.testing.assert_allclose(encoded.scales, absmax / np.float32(127), rtol=1e-6)
    assert np.all(np.abs(out.reshape(-1) - flat) <= scales / 2 * (1 + 1e-5) + 1e-38)


@SETTINGS
@given(x=float_arrays(max_side=30), fraction=st.sampled_from([0.001, 0.01, 0.1, 0.5, 1.0]))
def test_topk_is_exact_on_the_largest_entries_and_zero_elsewhere(x, fraction):
    out = roundtrip(x, "topk", fraction=fraction).reshape(-1)
    flat = x.reshape(-1)
    kept = np.zeros(flat.size, dtype=bool)
    kept[encode_payload({"x": x}, "topk", fraction=fraction).tensors["x"].indices] = True
    assert kept.sum() == min(flat.size, math.ceil(fraction * flat.size))
    np.testing.assert_array_equal(out[kept], flat[kept])
    assert not out[~kept].any()
    if kept.any() and (~kept).any():
        assert np.abs(flat[kept]).min() >= np.abs(flat[~kept]).max()


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_keeps_names_shapes_and_non_float_tensors(name):
    rng = np.random.default_rng(0)
    tensors = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float64),  # decoded as float32
        "scalar": np.float32(2.5).reshape(()),
        "empty": np.zeros((3, 0), dtype=np.float32),
        "half": rng.standard_normal(5).astype(np.float16),
        "steps": np.array(1234, dtype=np.int64),
        "mask": np.array([True, False]),
    }
    out = decode_payload(wire(encode_payload(tensors, name)))
    assert list(out) == list(tensors)
    for key, tensor in tensors.items():
        assert out[key].shape == tensor.shape
        if np.issubdtype(tensor.dtype, np.floating):
            assert out[key].dtype == np.float32
        else:
            assert out[key].dtype == tensor.dtype
            np.testing.assert_array_equal(out[key], tensor)
    if name != "topk":
        np.testing.assert_allclose(out["conv.weight"], tensors["conv.weight"], atol=0.02)
        np.testing.assert_allclose(out["scalar"], 2.5, rtol=1e-3)


def test_encoding_never_aliases_or_touches_the_callers_tensors():
    x = np.arange(10, dtype=np.float32)
    before = x.copy()
    for name in CODECS:
        payload = encode_payload({"x": x}, name)
        assert not np.shares_memory(payload.tensors["x"].values, x)
    feedback = ErrorFeedback()
    feedback.encode({"x": x}, "topk", fraction=0.2)
    feedback.encode({"x": x}, "topk", fraction=0.2)
    np.testing.assert_array_equal(x, before)


def test_encode_refuses_bad_arguments():
    x = {"x": np.ones(4, dtype=np.float32)}
    with pytest.raises(ValueError, match="unknown codec 'zstd'"):
        encode_payload(x, "zstd")
    with pytest.raises(ValueError, match="block"):
        encode_payload(x, "int8", block=0)
    with pytest.raises(ValueError, match="fraction"):
        encode_payload(x, "topk", fraction=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_payload({"x": np.array([1.0, np.nan], dtype=np.float32)}, "fp16")
    with pytest.raises(TypeError, match="names are str"):
        encode_payload({1: np.ones(2)}, "fp32")


# --- compression ratios ---------------------------------------------------------------------------


def test_compression_ratios_in_encoded_bytes():
    rng = np.random.default_rng(1)
    tensors = {
        "w": rng.standard_normal(1_000_000).astype(np.float32),
        "b": rng.standard_normal(1000).astype(np.float32),
    }
    size = {name: len(codec.encode(encode_payload(tensors, name))) for name in CODECS}
    raw = 4 * 1_001_000
    assert raw <= size["fp32"] < raw * 1.001
    assert 1.95 < size["fp32"] / size["fp16"] <= 2.0
    assert 3.8 < size["fp32"] / size["int8"] <= 4.0  # one fp32 scale per 256 int8 codes
    assert size["fp32"] / len(codec.encode(encode_payload(tensors, "topk", fraction=0.01))) > 45
    assert size["fp32"] / len(codec.encode(encode_payload(tensors, "topk", fraction=0.001))) > 400


# --- error feedback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"), [("topk", {"fraction": 0.05}), ("int8", {"block": 64}), ("fp16", {})]
)
def test_error_feedback_makes_decoded_payloads_add_up_to_the_inputs(name, params):
    rng = np.random.default_rng(2)
    feedback = ErrorFeedback()
    sent = np.zeros((50, 20), dtype=np.float64)
    decoded = np.zeros_like(sent)
    without = np.zeros_like(sent)  # the same codec, no feedback
    rounds = 300
    for _ in range(rounds):
        x = (rng.standard_normal(sent.shape) + 0.3).astype(np.float32)  # a bias the codec must not lose
        sent += x
        decoded += decode_payload(wire(feedback.encode({"x": x}, name, **params)))["x"]
        without += decode_payload(encode_payload({"x": x}, name, **params))["x"]
    residual = feedback.residual["x"]
    # Nothing is lost, only delayed: decoded + residual == sent (up to float32 rounding).
    np.testing.assert_allclose(decoded + residual, sent, atol=1e-3)
    # The residual stays bounded (a few rounds' worth at most), so the per-round mean error goes
    # to zero; without feedback the error of every round stays in the sum for good.
    x_norm = np.sqrt(sent.size * 1.09)  # norm of one round's input (variance 1 + 0.3^2)
    assert np.linalg.norm(residual) < 5 * x_norm
    assert np.linalg.norm(without - sent) > 5 * np.linalg.norm(decoded - sent)


def test_error_feedback_starts_over_when_a_shape_changes_and_on_reset():
    feedback = ErrorFeedback()
    feedback.encode({"x": np.arange(10, dtype=np.float32)}, "topk", fraction=0.1)
    assert feedback.residual["x"].shape == (10,) and feedback.residual["x"].any()
    with pytest.raises(ValueError):
        feedback.residual["x"][0] = 1.0  # read-only view
    payload = feedback.encode({"x": np.ones((2, 3), dtype=np.float32)}, "fp32")
    np.testing.assert_array_equal(decode_payload(payload)["x"], np.ones((2, 3)))
    assert not feedback.residual["x"].any()
    feedback.encode({"x": np.arange(4, dtype=np.float32)}, "topk", fraction=0.25)
    feedback.reset()
    assert feedback.residual == {}


# --- refusals ---------------------------------------------------------------------------------------


def good(name: str = "int8") -> CompressedPayload:
    x = np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30)
    return encode_payload({"x": x, "n": np.arange(3)}, name, block=256, fraction=0.1)


def with_tensor(payload: CompressedPayload, **changes) -> CompressedPayload:
    tensors = dict(payload.tensors)
    tensors["x"] = dataclasses.replace(tensors["x"], **changes)
    return CompressedPayload(payload.codec, payload.version, tensors)


def test_unknown_codec_and_version_are_refused_by_name():
    payload = good()
    with pytest.raises(
        DecodeError, match=r"unknown payload codec 'zstd'; this node decodes fp32, fp16, int8, topk"
    ):
        decode_payload(CompressedPayload("zstd", FORMAT_VERSION, payload.tensors))
    with pytest.raises(DecodeError, match="int8 payload format version 2; this node decodes 1"):
        decode_payload(CompressedPayload("int8", 2, payload.tensors))
    with pytest.raises(DecodeError, match="not a compressed payload"):
        decode_payload({"x": np.ones(3)})  # type: ignore[arg-type]


I8, F32, F16 = np.int8, np.float32, np.float16


@pytest.mark.parametrize(
    ("name", "changes", "match"),
    [
        ("int8", {"method": "topk"}, "method 'topk' in a int8 payload"),
        ("int8", {"shape": (20, 31)}, "600 values for a tensor of 620"),
        ("int8", {"shape": (1,) * 9}, "shape"),
        ("int8", {"shape": (-1, 600)}, "shape"),
        ("int8", {"values": np.zeros((20, 30), I8)}, "1-D"),
        ("int8", {"values": np.zeros(600, np.int16)}, "codes must be int8"),
        ("int8", {"values": np.full(600, -128, I8)}, "-128"),
        ("int8", {"scales": None}, "wrong optional fields"),
        ("int8", {"scales": np.ones(2, F32)}, "2 scales for 600 values in blocks of 256"),
        ("int8", {"scales": np.array([1, np.nan, 1], F32)}, "NaN or inf in scales"),
        ("int8", {"scales": np.array([1, np.inf, 1], F32)}, "NaN or inf in scales"),
        ("int8", {"scales": np.array([1, -1, 1], F32)}, "negative int8 scale"),
        ("int8", {"scales": np.ones(3, np.float64)}, "scales must be float32"),
        ("int8", {"block": 0}, "block size 0"),
        ("int8", {"block": 2**30}, "block size"),
        ("topk", {"indices": np.array([0, 5, 700, *range(800, 857)], np.int32)}, "out of range"),
        ("topk", {"indices": np.array([-1, *range(1, 60)], np.int32)}, "out of range"),
        ("topk", {"indices": np.array([3, 3, *range(10, 68)], np.int32)}, "strictly increasing"),
        ("topk", {"indices": np.array([9, 3, *range(10, 68)], np.int32)}, "strictly increasing"),
        ("topk", {"indices": np.arange(60, dtype=np.float32)}, "indices must be int32 or int64"),
        ("topk", {"indices": np.arange(59, dtype=np.int32)}, "59 indices for 60 values"),
        ("topk", {"indices": None}, "wrong optional fields"),
        ("topk", {"values": np.full(60, np.nan, F32)}, "NaN or inf in values"),
        ("topk", {"values": np.ones(60, F16)}, "values must be float32"),
        ("topk", {"shape": (5,)}, "60 kept entries of a 5-entry tensor"),
        ("topk", {"block": 4}, "block size"),
        ("fp16", {"values": np.ones(600, F32)}, "values must be float16"),
        ("fp16", {"values": np.full(600, np.inf, F16)}, "NaN or inf in values"),
        ("fp32", {"values": np.ones(599, F32)}, "599 values"),
        ("fp32", {"method": "raw"}, "raw tensor must not be floating point"),
    ],
)
def test_malformed_tensors_are_refused(name, changes, match):
    with pytest.raises(DecodeError, match=match):
        decode_payload(with_tensor(good(name), **changes))


def test_expected_names_and_shapes_and_the_element_cap():
    payload = good("topk")
    assert decode_payload(payload, expected={"x": (20, 30), "n": (3,)})["x"].shape == (20, 30)
    with pytest.raises(DecodeError, match=r"missing \{'y'\}, extra \{'n'\}"):
        decode_payload(payload, expected={"x": (20, 30), "y": (3,)})
    with pytest.raises(DecodeError, match=r"shape \(20, 30\) differs from the model's \(30, 20\)"):
        decode_payload(payload, expected={"x": (30, 20), "n": (3,)})
    with pytest.raises(DecodeError, match="more than 600 elements"):
        decode_payload(payload, max_elements=600)
    # A top-k payload of a few bytes claiming a huge tensor is refused before anything is built.
    tiny = EncodedTensor("topk", (2**20, 2**20), np.ones(1, F32), indices=np.zeros(1, np.int32))
    bomb = wire(CompressedPayload("topk", FORMAT_VERSION, {"x": tiny}))
    assert len(codec.encode(bomb)) < 200
    with pytest.raises(DecodeError, match="more than"):
        decode_payload(bomb)


@SETTINGS
@given(data=st.data())
def test_mutated_payload_bytes_raise_only_decode_error(data):
    name = data.draw(st.sampled_from(CODECS))
    body = bytearray(codec.encode(good(name)))
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        payload = codec.decode(bytes(body))
        if isinstance(payload, CompressedPayload):
            decode_payload(payload)
    except DecodeError:
        pass
