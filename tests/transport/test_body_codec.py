"""Transfer bodies: models found anywhere in a message's dataclass fields travel compressed and come
back as the same message type; per-destination error feedback; refusal of bodies that lie."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import trio

from transport import codec
from transport.body_codec import (
    CODEC_NAME,
    BodyEncoder,
    CompressedMessage,
    CompressionConfig,
    decode_body,
    is_known_codec,
)
from transport.compression import encode_payload
from transport.errors import DecodeError
from transport.messages import ModelPayload, ModelUpdate


@codec.message("test_body_codec_note", version=1)
@dataclass(frozen=True, slots=True)
class Note:
    text: str


@dataclass(frozen=True, slots=True, eq=False)
class Inner:
    label: str
    model: ModelPayload


@codec.message("test_body_codec_nested", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class Nested:
    round: int
    first: ModelPayload
    inner: Inner


def tensors(n: int = 10_000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(n, dtype=np.float32), "steps": np.arange(4, dtype=np.int64)}


def update(n: int = 10_000, seed: int = 0) -> ModelUpdate:
    return ModelUpdate(round=3, model=ModelPayload(tensors(n, seed), 2.0))


def encode(encoder: BodyEncoder, message: object, destination: str = "peer") -> tuple[str, bytes]:
    async def main():
        return await encoder.encode(message, destination=destination)

    name, segments = trio.run(main)
    return name, b"".join(segments)


def decode(name: str, body: bytes, **kwargs) -> object:
    async def main():
        return await decode_body(name, body, **kwargs)

    return trio.run(main)


def roundtrip(encoder: BodyEncoder, message: object, destination: str = "peer") -> object:
    return decode(*encode(encoder, message, destination))


def test_uncompressed_bodies_are_the_plain_codec_and_view_the_tensors():
    message = update(100_000)

    async def main():
        return await BodyEncoder().encode(message, destination="peer")

    name, segments = trio.run(main)
    assert name == CODEC_NAME
    assert b"".join(segments) == codec.encode(message)
    assert any(np.shares_memory(np.asarray(s), message.model.tensors["w"]) for s in segments)


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8", "topk"])
def test_a_compressed_model_comes_back_as_the_same_message_type(name):
    message = update()
    header, body = encode(BodyEncoder(CompressionConfig(codec=name)), message)
    assert header == f"{CODEC_NAME}+{name}" and is_known_codec(header)
    got = decode(header, body)
    assert type(got) is ModelUpdate and got.round == 3 and got.model.weight == 2.0
    w = got.model.tensors["w"]
    assert w.dtype == np.float32 and w.shape == (10_000,)
    np.testing.assert_array_equal(got.model.tensors["steps"], np.arange(4))
    error = np.abs(w - message.model.tensors["w"]).max()
    assert error == 0 if name == "fp32" else error > 0
    ratio = {"fp32": 1.01, "fp16": 0.52, "int8": 0.28, "topk": 0.03}[name]
    assert len(body) < ratio * len(codec.encode(message))


def test_messages_without_a_model_travel_plain_even_when_compressing():
    name, body = encode(BodyEncoder(CompressionConfig(codec="int8")), Note("hi"))
    assert name == CODEC_NAME and decode(name, body) == Note("hi")


def test_models_in_nested_dataclasses_are_all_compressed_and_restored_in_place():
    first, second = ModelPayload(tensors(seed=1), 1.0), ModelPayload(tensors(seed=2), 5.0)
    message = Nested(7, first, Inner("x", second))
    name, body = encode(BodyEncoder(CompressionConfig(codec="fp16")), message)
    envelope = codec.decode(body)
    assert isinstance(envelope, CompressedMessage) and len(envelope.models) == 2
    got = decode(name, body)
    assert type(got) is Nested and got.round == 7 and got.inner.label == "x"
    assert got.first.weight == 1.0 and got.inner.model.weight == 5.0
    np.testing.assert_allclose(got.first.tensors["w"], first.tensors["w"], rtol=2**-10)
    np.testing.assert_allclose(got.inner.model.tensors["w"], second.tensors["w"], rtol=2**-10)


def test_a_non_finite_model_is_sent_uncompressed_for_the_receiver_to_refuse():
    bad = tensors()
    bad["w"][5] = np.nan
    name, body = encode(BodyEncoder(CompressionConfig(codec="int8")), ModelUpdate(1, ModelPayload(bad, 1.0)))
    assert name == CODEC_NAME
    assert np.isnan(decode(name, body).model.tensors["w"][5])


# --- error feedback ----------------------------------------------------------------------------------


def topk_encoder(**kwargs) -> BodyEncoder:
    return BodyEncoder(CompressionConfig(codec="topk", topk_fraction=0.1, **kwargs))


def test_error_feedback_adds_what_the_last_model_to_a_peer_left_out():
    encoder, message = topk_encoder(), update()
    w = message.model.tensors["w"]
    first = roundtrip(encoder, message).model.tensors["w"]
    second = roundtrip(encoder, message).model.tensors["w"]
    kept = second != 0
    assert kept.sum() == math.ceil(0.1 * w.size)
    # The second payload is top-k of (w + residual), the residual being w minus the first payload.
    np.testing.assert_allclose(second[kept], (2 * w - first)[kept], rtol=1e-6)
    assert not np.array_equal(kept, first != 0)
    # Another destination has its own (empty) residual; the first destination's is untouched by it.
    np.testing.assert_array_equal(roundtrip(encoder, message, "other").model.tensors["w"], first)


def test_without_error_feedback_the_same_model_encodes_the_same():
    encoder, message = topk_encoder(error_feedback=False), update()
    first = roundtrip(encoder, message).model.tensors["w"]
    np.testing.assert_array_equal(roundtrip(encoder, message).model.tensors["w"], first)


def test_residuals_are_forgotten_for_departed_and_least_recently_used_peers():
    encoder, message = topk_encoder(feedback_peers=2), update()
    fresh = roundtrip(encoder, message, "a").model.tensors["w"]
    encoder.forget("a")
    np.testing.assert_array_equal(roundtrip(encoder, message, "a").model.tensors["w"], fresh)
    roundtrip(encoder, message, "b")
    roundtrip(encoder, message, "c")  # a is now the least recently used of three: dropped
    np.testing.assert_array_equal(roundtrip(encoder, message, "a").model.tensors["w"], fresh)
    assert not np.array_equal(roundtrip(encoder, message, "c").model.tensors["w"], fresh)


# --- refusals -----------------------------------------------------------------------------------------


def envelope(message: object, models: list) -> bytes:
    return codec.encode(CompressedMessage(codec.encode(message), models))


def stripped(message: ModelUpdate) -> ModelUpdate:
    return ModelUpdate(message.round, ModelPayload({}, message.model.weight))


@pytest.mark.parametrize(
    ("name", "body", "error"),
    [
        (f"{CODEC_NAME}+zstd", lambda m: codec.encode(m), "unknown body codec"),
        ("\x00garbage", lambda m: codec.encode(m), "unknown body codec"),
        (f"{CODEC_NAME}+int8", lambda m: codec.encode(m), "must be a compressed message"),
        (
            f"{CODEC_NAME}+int8",
            lambda m: envelope(stripped(m), [encode_payload(m.model.tensors, "topk")]),
            "header calls int8",
        ),
        (f"{CODEC_NAME}+int8", lambda m: envelope(stripped(m), []), "0 compressed models for a message"),
        (
            f"{CODEC_NAME}+int8",
            lambda m: envelope(m, [encode_payload(m.model.tensors, "int8")]),
            "tensors outside its compressed models",
        ),
    ],
)
def test_bodies_that_do_not_match_their_codec_name_are_refused(name, body, error):
    with pytest.raises(DecodeError, match=error):
        decode(name, body(update(100)))


def test_decoding_builds_no_more_elements_than_the_limits_allow():
    name, body = encode(BodyEncoder(CompressionConfig(codec="topk")), update(50_000))
    with pytest.raises(DecodeError, match="more than 40000 elements"):
        decode(name, body, limits=codec.Limits(max_elements=40_000))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"codec": "zip"}, "unknown compression 'zip'"),
        ({"int8_block": 0}, "int8_block"),
        ({"topk_fraction": 0.0}, "topk_fraction"),
        ({"topk_fraction": 1.5}, "topk_fraction"),
        ({"feedback_peers": 0}, "feedback_peers"),
    ],
)
def test_compression_config_refuses_bad_values(change, error):
    with pytest.raises(ValueError, match=error):
        CompressionConfig(**change)
