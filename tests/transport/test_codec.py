"""The message codec: round trips for every message type, and nothing but DecodeError from bad bytes."""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import time
import types
import typing
from dataclasses import dataclass
from unittest import mock

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import transport.messages  # noqa: F401  (registers the real message types)
from transport import codec
from transport.codec import DEFAULT_LIMITS, TENSOR_EXT_CODE, Limits, decode, encode, message, message_types
from transport.errors import DecodeError
from transport.messages import ModelPayload, ModelUpdate

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64"]


# --- a private message type with every supported annotation kind -----------------------------------


@dataclass(frozen=True, slots=True)
class Inner:
    label: str
    values: list[float]


@message("test_all_types", version=3)
@dataclass(frozen=True, slots=True, eq=False)
class AllTypes:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    t: np.ndarray
    ints: list[int]
    var: tuple[float, ...]
    fixed: tuple[int, str, bool]
    empty: tuple[()]
    by_name: dict[str, np.ndarray]
    by_id: dict[int, list[str]]
    maybe: int | None
    inner: Inner
    inners: list[Inner]
    maybe_inner: Inner | None
    nested: list[dict[str, tuple[int, ...]]]


# Left out of the generic round trip: it refuses most random content.
@message("test_checked_range", version=1)
@dataclass(frozen=True, slots=True)
class CheckedRange:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low {self.low} above high {self.high}")


NOT_ROUND_TRIPPED = {"test_checked_range"}

# --- strategies and comparison, driven by the annotations ------------------------------------------

tensors = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
)


@functools.cache
def strategy_for(tp: typing.Any) -> st.SearchStrategy:
    """Values of annotation `tp`: every field kind the codec supports, so new message types get covered."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | strategy_for(inner)
    simple = {
        bool: st.booleans(),
        int: st.integers(-(2**63), 2**64 - 1),
        float: st.floats(),
        str: st.text(max_size=8),
        bytes: st.binary(max_size=8),
        np.ndarray: tensors,
    }
    if tp in simple:
        return simple[tp]
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=2)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=2).map(tuple)
    if origin is tuple:
        return st.tuples(*map(strategy_for, args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=2)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = st.fixed_dictionaries({f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(tp)})
        # Messages may refuse content in __post_init__ (e.g. a degree < 1): draw only valid ones.
        return fields.map(lambda kwargs: _construct(tp, kwargs)).filter(lambda msg: msg is not None)
    raise NotImplementedError(f"no strategy for {tp!r}")


def _construct(cls: type, kwargs: dict) -> object | None:
    try:
        return cls(**kwargs)
    except ValueError:
        return None


def assert_same(got: object, want: object, tp: typing.Any, path: str = "msg") -> None:
    """Field-by-field equality with exact types; arrays by dtype, shape and bytes; floats by bits (NaN)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if want is None:
            assert got is None, path
            return
        (tp,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is np.ndarray:
        assert isinstance(got, np.ndarray), path
        assert got.dtype == want.dtype and got.shape == want.shape, path
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), path
        assert got.tobytes() == want.tobytes(), path
    elif tp is float:
        assert type(got) is float and struct.pack("<d", got) == struct.pack("<d", want), path
    elif tp in (bool, int, str, bytes):
        assert type(got) is tp and got == want, path
    elif origin is list or origin is tuple:
        assert type(got) is origin and len(got) == len(want), path
        item_types = [args[0]] * len(want) if origin is list or args[-1:] == (Ellipsis,) else args
        for i, (g, w, t) in enumerate(zip(got, want, item_types, strict=True)):
            assert_same(g, w, t, f"{path}[{i}]")
    elif origin is dict:
        assert type(got) is dict and list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], args[1], f"{path}[{key!r}]")
    elif dataclasses.is_dataclass(tp):
        assert type(got) is tp, path
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            assert_same(getattr(got, f.name), getattr(want, f.name), hints[f.name], f"{path}.{f.name}")
    else:
        raise NotImplementedError(tp)


def model_update(tensors: dict[str, np.ndarray], round: int = 7, weight: float = 2.5) -> ModelUpdate:
    return ModelUpdate(round=round, model=ModelPayload(tensors=tensors, weight=weight))


def tensor_ext(dtype: object, shape: object, body: bytes) -> msgpack.ExtType:
    header = msgpack.packb([dtype, shape])
    return msgpack.ExtType(TENSOR_EXT_CODE, struct.pack("<H", len(header)) + header + body)


def raw_update(tensors: object, round: object = 1, weight: object = 1.0, *, tag="model_update", version=1):
    return msgpack.packb([tag, version, round, [tensors, weight]])


# --- round trips ---------------------------------------------------------------------------------


def test_all_types_is_registered_alongside_the_real_messages():
    types_ = message_types()
    assert types_["model_update"] is ModelUpdate
    assert types_["test_all_types"] is AllTypes


@pytest.mark.parametrize("tag", sorted(set(message_types()) - NOT_ROUND_TRIPPED))
@SETTINGS
@given(data=st.data())
def test_every_message_type_round_trips(tag, data):
    cls = message_types()[tag]
    msg = data.draw(strategy_for(cls))
    assert_same(decode(encode(msg)), msg, cls)


def reference_encode(msg: object) -> bytes:
    """The wire bytes as plain msgpack makes them, each tensor ext body joined into bytes: the oracle."""

    def default(obj: object) -> object:
        if isinstance(obj, np.ndarray):
            array = np.asarray(obj, dtype=obj.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
            header = msgpack.packb([array.dtype.name, list(array.shape)])
            body = struct.pack("<H", len(header)) + header + array.tobytes()
            return msgpack.ExtType(TENSOR_EXT_CODE, body)
        if dataclasses.is_dataclass(obj):
            return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(type(obj))

    reg = codec._BY_CLASS[type(msg)]
    values = [getattr(msg, f.name) for f in dataclasses.fields(msg)]
    return msgpack.packb([reg.tag, reg.version, *values], default=default, use_bin_type=True)


@pytest.mark.parametrize("segment_bytes", [0, codec._SEGMENT_TENSOR_BYTES])  # 0: every tensor a segment
@pytest.mark.parametrize("tag", sorted(message_types()))
@SETTINGS
@given(data=st.data())
def test_segments_join_to_exactly_the_encoded_bytes(tag, segment_bytes, data):
    msg = data.draw(strategy_for(message_types()[tag]))
    with mock.patch.object(codec, "_SEGMENT_TENSOR_BYTES", segment_bytes):
        segments = codec.encode_segments(msg)
        assert encode(msg) == b"".join(segments) == reference_encode(msg)
    assert all(isinstance(segment, (bytes, memoryview)) for segment in segments)


@pytest.mark.parametrize("elements", [0, 1, 3, 4, 7, 60, 100, 20_000])  # fixext, ext 8/16/32 bodies
@pytest.mark.parametrize("dtype", ["bool", "int8", "float64"])
def test_segments_of_every_ext_length_form_match(dtype, elements):
    msg = model_update({"a": np.ones(elements, dtype), "b": np.zeros((2, elements), dtype)})
    with mock.patch.object(codec, "_SEGMENT_TENSOR_BYTES", 0):
        assert b"".join(codec.encode_segments(msg)) == reference_encode(msg)
    assert_same(decode(encode(msg)), msg, ModelUpdate)


def test_big_tensors_are_segments_viewing_the_array_itself():
    big = np.arange(2**20, dtype=np.float32)
    msg = model_update({"big": big, "small": np.arange(3, dtype=np.int64), "also": big[::-1].copy()})
    segments = codec.encode_segments(msg)
    shared = [s for s in segments if isinstance(s, memoryview) and np.shares_memory(np.asarray(s), big)]
    assert len(shared) == 1 and shared[0].nbytes == big.nbytes and shared[0].readonly
    assert sum(isinstance(s, memoryview) for s in segments) == 2  # the 24-byte tensor is inline
    assert b"".join(segments) == encode(msg) == reference_encode(msg)


def test_big_strided_or_big_endian_tensors_are_converted_once():
    base = np.arange(2**18, dtype=np.float64).reshape(512, 512)
    for source in (base.T, base.astype(">f8"), base[:, ::2]):
        msg = model_update({"t": source})
        segments = codec.encode_segments(msg)
        assert not any(isinstance(s, memoryview) and np.shares_memory(np.asarray(s), base) for s in segments)
        assert b"".join(segments) == reference_encode(msg)
        got = decode(b"".join(segments)).model.tensors["t"]
        assert got.dtype == np.float64 and np.array_equal(got, source)


def test_memoryview_input_decodes_too():
    msg = model_update({"w": np.arange(3, dtype=np.int16)})
    assert_same(decode(memoryview(encode(msg))), msg, ModelUpdate)
    assert_same(decode(bytearray(encode(msg))), msg, ModelUpdate)


@pytest.mark.parametrize("dtype", DTYPES)
def test_big_endian_and_strided_tensors_arrive_as_little_endian_values(dtype):
    base = np.arange(24).reshape(2, 3, 4).astype(dtype)
    sources = [
        base.astype(base.dtype.newbyteorder(">")),
        base.transpose(2, 0, 1),
        base[:, ::2, 1:],
        base[0, 1],
    ]
    for source in sources:
        got = decode(encode(model_update({"t": source}))).model.tensors["t"]
        assert got.dtype == np.dtype(dtype) and got.dtype.byteorder in "=|<"
        assert got.shape == source.shape and np.array_equal(got, source)


def test_decoded_tensors_view_the_message_bytes_without_copying():
    got = decode(encode(model_update({"w": np.arange(1000, dtype=np.float32)}))).model.tensors["w"]
    assert not got.flags.owndata and got.base is not None
    assert not got.flags.writeable  # read-only views, by design


def test_numpy_scalars_and_ints_for_floats_encode_as_plain_values():
    got = decode(encode(ModelUpdate(np.int64(4), ModelPayload({}, np.float32(0.5)))))
    assert type(got.round) is int and got.round == 4
    assert type(got.model.weight) is float and got.model.weight == 0.5
    got = decode(encode(model_update({}, weight=3)))
    assert type(got.model.weight) is float and got.model.weight == 3.0


# --- encode-side programming errors --------------------------------------------------------------


def test_encode_refuses_unregistered_objects_and_untransportable_tensors():
    with pytest.raises(TypeError, match="not a registered message"):
        encode(ModelPayload({}, 1.0))
    with pytest.raises(TypeError, match="not a registered message"):
        encode({"round": 1})
    with pytest.raises(TypeError, match="dtype"):
        encode(model_update({"c": np.zeros(3, np.complex64)}))
    with pytest.raises(TypeError, match="dtype"):
        encode(model_update({"o": np.array([None, 1], dtype=object)}))
    with pytest.raises(ValueError, match="dims"):
        encode(model_update({"deep": np.zeros((1,) * 9)}))


def test_registration_refuses_duplicates_and_non_frozen_classes():
    with pytest.raises(ValueError, match="already registered"):
        message("model_update", version=2)(dataclass(frozen=True)(type("Other", (), {})))
    with pytest.raises(ValueError, match="already registered"):
        message("test_model_update_again", version=1)(ModelUpdate)
    with pytest.raises(TypeError, match="frozen dataclass"):
        message("test_not_frozen", version=1)(dataclass(type("Mutable", (), {})))
    with pytest.raises(TypeError, match="frozen dataclass"):
        message("test_not_a_dataclass", version=1)(type("Plain", (), {}))
    assert "test_not_frozen" not in message_types()


# --- refusals --------------------------------------------------------------------------------------


def refused(data: bytes, match: str | None, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(data, limits=limits)


def test_oversize_frame_is_refused_before_unpacking():
    data = encode(model_update({"w": np.zeros(100, np.float32)}))
    refused(data, "exceeds the 100-byte cap", Limits(max_frame_bytes=100))
    assert decode(data, limits=Limits(max_frame_bytes=len(data))).round == 7


def test_too_many_tensors():
    data = encode(model_update({str(i): np.zeros(1, np.int8) for i in range(5)}))
    refused(data, "more than 4 tensors", Limits(max_tensors=4))
    decode(data, limits=Limits(max_tensors=5))


def test_too_many_elements_across_tensors():
    data = encode(model_update({"a": np.zeros(6, np.int8), "b": np.zeros((2, 3), np.int8)}))
    refused(data, "more than 11 tensor elements", Limits(max_elements=11))
    decode(data, limits=Limits(max_elements=12))


@pytest.mark.parametrize("shape", [[2**40], [2**20, 2**20], [0, 2**62], [2**64 - 1]])
def test_huge_claimed_shapes_are_refused_from_the_header_alone(shape):
    data = raw_update({"w": tensor_ext("float32", shape, b"\0" * 4)})
    start = time.perf_counter()
    refused(data, "tensor")
    assert time.perf_counter() - start < 0.5


def test_unknown_tag_and_wrong_version():
    refused(raw_update({}, tag="no_such_message"), "unknown message tag 'no_such_message'")
    refused(raw_update({}, version=2), r"model_update: got version 2, this node speaks version 1")
    refused(msgpack.packb(["model_update", "1", 1, [{}, 1.0]]), "version must be int")
    refused(msgpack.packb([1, 1, 1, [{}, 1.0]]), "tag must be str")
    refused(msgpack.packb({"model_update": 1}), "got map")
    refused(msgpack.packb(["model_update"]), "got array")
    refused(msgpack.packb("x" * 10_000), "got str")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw_update({}, weight="heavy"), r"^model_update\.model\.weight: expected float, got str$"),
        (raw_update({}, weight=True), r"^model_update\.model\.weight: expected float, got bool$"),
        (raw_update({}, round=1.0), r"^model_update\.round: expected int, got float$"),
        (raw_update({}, round=False), r"^model_update\.round: expected int, got bool$"),
        (raw_update({}, round=None), r"^model_update\.round: expected int, got NoneType$"),
        (raw_update({"w": 3}), r"^model_update\.model\.tensors\['w'\]: expected tensor, got int$"),
        (
            raw_update({"w": b"\0\0\0\0"}),
            r"^model_update\.model\.tensors\['w'\]: expected tensor, got bytes$",
        ),
        (
            raw_update({1: tensor_ext("int8", [1], b"\0")}),
            r"^model_update\.model\.tensors: expected str keys",
        ),
        (raw_update([]), r"^model_update\.model\.tensors: expected map, got array$"),
        (msgpack.packb(["model_update", 1, 1, {"tensors": {}}]), r"^model_update\.model: expected array"),
        (msgpack.packb(["model_update", 1, 1, [{}]]), r"^model_update\.model: expected 2 fields, got 1$"),
        (msgpack.packb(["model_update", 1, 1, [{}, 1.0], 5]), r"^model_update: expected 2 fields, got 3$"),
        (msgpack.packb(["model_update", 1]), r"^model_update: expected 2 fields, got 0$"),
    ],
)
def test_wrong_fields_are_named_by_path(data, match):
    refused(data, match)


def test_all_types_paths_reach_into_containers():
    msg = AllTypes(
        i=1, f=1.0, s="", b=b"", flag=True, t=np.zeros(1), ints=[1, 2], var=(), fixed=(1, "a", True),
        empty=(), by_name={}, by_id={5: ["x"]}, maybe=None, inner=Inner("a", [1.0]), inners=[],
        maybe_inner=None, nested=[{"k": (1, 2)}],
    )  # fmt: skip
    raw = msgpack.unpackb(encode(msg), strict_map_key=False, ext_hook=msgpack.ExtType)
    names = [f.name for f in dataclasses.fields(AllTypes)]

    def with_field(name, value):
        changed = list(raw)
        changed[2 + names.index(name)] = value
        return msgpack.packb(changed)

    refused(with_field("ints", [1, "2"]), r"^test_all_types\.ints\[1\]: expected int, got str$")
    refused(with_field("fixed", [1, "a"]), r"^test_all_types\.fixed: expected 3 items, got 2$")
    refused(with_field("fixed", [1, 2, True]), r"^test_all_types\.fixed\[1\]: expected str, got int$")
    refused(with_field("empty", [1]), r"^test_all_types\.empty: expected 0 items, got 1$")
    refused(with_field("by_id", {"5": []}), r"^test_all_types\.by_id: expected int keys, got str$")
    refused(with_field("by_id", {True: []}), r"^test_all_types\.by_id: expected int keys, got bool$")
    refused(with_field("by_id", {5: [b"x"]}), r"^test_all_types\.by_id\[5\]\[0\]: expected str, got bytes$")
    refused(with_field("maybe", "1"), r"^test_all_types\.maybe: expected int, got str$")
    refused(with_field("inner", ["a", [1.0, None]]), r"^test_all_types\.inner\.values\[1\]: expected float")
    refused(with_field("inners", [["a"]]), r"^test_all_types\.inners\[0\]: expected 2 fields, got 1$")
    refused(with_field("maybe_inner", 1), r"^test_all_types\.maybe_inner: expected array, got int$")
    refused(
        with_field("nested", [{"k": [1, 2.5]}]), r"^test_all_types\.nested\[0\]\['k'\]\[1\]: expected int"
    )
    refused(with_field("nested", [{(1,): []}]), "malformed msgpack")  # array as map key
    assert decode(with_field("maybe", 3)).maybe == 3


def test_trailing_bytes():
    data = encode(model_update({"w": np.ones(2)}))
    refused(data + b"\x00", "1 trailing bytes")
    refused(data + data, "trailing bytes")


@pytest.mark.parametrize("dtype", ["complex64", "object", "float128", "<f4", "f4", "O", "V8", "", 4, None])
def test_bad_dtype(dtype):
    refused(raw_update({"w": tensor_ext(dtype, [1], b"\0" * 4)}), "dtype")


@pytest.mark.parametrize(
    ("shape", "body", "match"),
    [
        ([2, 2], b"\0" * 15, "needs 16 bytes, has 15"),
        ([2, 2], b"\0" * 17, "needs 16 bytes, has 17"),
        ([], b"", "needs 4 bytes, has 0"),
        ([0], b"\0", "needs 0 bytes, has 1"),
        ([-1], b"", "non-negative ints"),
        ([1.0], b"\0" * 4, "non-negative ints"),
        ([True], b"\0" * 4, "non-negative ints"),
        ([1] * 9, b"\0" * 4, "malformed tensor header"),
        ("4", b"\0" * 4, "not \\[dtype, shape\\]"),
    ],
)
def test_bad_tensor_shapes(shape, body, match):
    refused(raw_update({"w": tensor_ext("float32", shape, body)}), match)


def test_bad_tensor_ext_framing():
    refused(raw_update({"w": msgpack.ExtType(TENSOR_EXT_CODE, b"\x01")}), "too short")
    refused(raw_update({"w": msgpack.ExtType(TENSOR_EXT_CODE, b"\xff\x00abc")}), "runs past the end")
    refused(raw_update({"w": msgpack.ExtType(TENSOR_EXT_CODE, b"\x01\x00\xc1")}), "malformed tensor header")
    header = msgpack.packb(["float32", [1]]) + b"\x00"  # header length covers a stray byte
    ext = msgpack.ExtType(TENSOR_EXT_CODE, struct.pack("<H", len(header)) + header + b"\0" * 4)
    refused(raw_update({"w": ext}), "malformed tensor header")
    refused(raw_update({"w": tensor_ext("float32", {"d": 1}, b"\0" * 4)}), "malformed tensor header")
    refused(raw_update({"w": msgpack.ExtType(2, b"")}), "unknown msgpack ext type 2")
    refused(raw_update({"w": msgpack.Timestamp(0)}), "expected tensor, got Timestamp")


def test_length_caps():
    refused(
        raw_update({"x" * 11: tensor_ext("int8", [1], b"\0")}), "malformed msgpack", Limits(max_str_len=10)
    )
    refused(msgpack.packb(["test_all_types", 3, 1, 1.0, "", b"x" * 11]), "malformed", Limits(max_bin_len=10))
    refused(raw_update({str(i): 0 for i in range(11)}), "malformed msgpack", Limits(max_map_len=10))
    refused(msgpack.packb(["model_update", 1, *range(11)]), "malformed msgpack", Limits(max_array_len=10))
    # An array header claiming a million entries on a handful of bytes is refused by msgpack, not built.
    refused(b"\xdd\x00\x0f\x42\x40" + b"\x00" * 10, "malformed msgpack")


def test_max_depth():
    data = encode(model_update({"w": np.zeros(1)}))  # message array > payload array > tensors map
    refused(data, r"model_update\.model\.tensors: nested deeper than 2", Limits(max_depth=2))
    decode(data, limits=Limits(max_depth=3))
    deep = msgpack.packb(["model_update", 1, 1, [{}, 1.0]])
    refused(b"\x91" * 20 + deep, "got array")


@pytest.mark.parametrize("depth", [10, 1_000, 100_000])
def test_pathological_nesting_raises_only_decode_error(depth):
    refused(b"\x91" * depth + b"\x00", None)
    refused(b"\x81\x00" * depth + b"\x00", None)
    refused(b"\x93\xacmodel_update\x01\x92" + b"\x91" * depth, None)


def test_garbage_utf8_and_incomplete_input():
    refused(b"\xa2\xff\xfe", "malformed msgpack")
    refused(b"", "malformed msgpack")
    refused(b"\xc1", "malformed msgpack")
    refused(encode(model_update({"w": np.ones(3)}))[:-1], "malformed msgpack")


# --- fuzzing: nothing but DecodeError ------------------------------------------------------------


def decode_or_decode_error(data: bytes) -> None:
    """Decode must either fail with DecodeError or return a message that survives its own round trip."""
    try:
        got = decode(data)
    except DecodeError:
        return
    assert type(got) in message_types().values()
    assert_same(decode(encode(got)), got, type(got))


@SETTINGS
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_decode_error(data):
    decode_or_decode_error(data)


@SETTINGS
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_after_a_valid_prefix_raise_only_decode_error(data):
    decode_or_decode_error(b"\x94\xacmodel_update\x01" + data)
    decode_or_decode_error(b"\x92\xacmodel_update\x01\x92\x81\xa1w\xc7" + data)


@st.composite
def mutated(draw, cls):
    data = bytearray(encode(draw(strategy_for(cls))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


@settings(SETTINGS, max_examples=100)
@given(data=mutated(ModelUpdate))
def test_mutated_model_updates_raise_only_decode_error(data):
    decode_or_decode_error(data)


@settings(SETTINGS, max_examples=100)
@given(data=mutated(AllTypes))
def test_mutated_all_types_raise_only_decode_error(data):
    decode_or_decode_error(data)


def test_limits_defaults_are_sane():
    assert DEFAULT_LIMITS.max_frame_bytes == 512 * 2**20
    assert DEFAULT_LIMITS.max_elements == 2**28 and DEFAULT_LIMITS.max_tensors == 10_000
    assert DEFAULT_LIMITS.max_depth == 16 and math.prod([2**14] * 2) <= DEFAULT_LIMITS.max_elements


def test_a_message_refusing_its_content_is_a_decode_error():
    assert decode(encode(CheckedRange(1, 2))) == CheckedRange(1, 2)
    refused(msgpack.packb(["test_checked_range", 1, 3, 2]), r"^test_checked_range: low 3 above high 2$")


@dataclass(frozen=True)
class BadSchema:  # not registered: a broken type in the registry would break every generic test
    ids: set[int]


def test_unsupported_annotations_are_programming_errors():
    # The schema check runs on a type's first encode or decode; it is a TypeError there, not a DecodeError.
    with pytest.raises(TypeError, match=r"BadSchema\.ids: unsupported annotation"):
        codec._fields(BadSchema)
    with pytest.raises(TypeError, match="unsupported annotation"):
        codec._check_annotation(dict[bytes, int], "x")
    with pytest.raises(TypeError, match="unsupported annotation"):
        codec._check_annotation(int | str, "x")
    codec._check_annotation(dict[int, list[tuple[int, ...] | None]], "x")


# --- big messages: tensors viewed in place ---------------------------------------------------------

# Every message walked and every tensor viewed in place, however small.
view_everything = mock.patch.multiple(codec, _VIEW_MESSAGE_BYTES=0, _VIEW_TENSOR_BYTES=0)


def outcome(data: bytes | bytearray) -> tuple[str, object]:
    try:
        return "ok", decode(data)
    except DecodeError as exc:
        return "error", str(exc)


def assert_same_outcome(data: bytes) -> None:
    """bytes (walked, tensors in place) and a bytearray of them (never walked) decode alike."""
    in_place, copied = outcome(data), outcome(bytearray(data))
    assert in_place[0] == copied[0], (in_place, copied)
    if in_place[0] == "error":
        assert in_place == copied
    else:
        assert_same(in_place[1], copied[1], type(copied[1]))


def owner(array: np.ndarray) -> object:
    """The object whose memory `array` views (through numpy views and memoryviews)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_big_tensors_of_a_big_message_view_its_bytes_and_are_read_only():
    big, small = np.arange(2**18, dtype=np.float32), np.arange(10, dtype=np.int64)
    data = encode(model_update({"big": big, "small": small, "mid": np.ones((128, 128), np.float32)}))
    assert len(data) >= codec._VIEW_MESSAGE_BYTES
    got = decode(data).model.tensors
    assert owner(got["big"]) is data and owner(got["mid"]) is data  # bodies of 64 KiB and more
    assert owner(got["small"]) is not data  # copied out by msgpack, as before
    assert not any(t.flags.writeable for t in got.values())
    assert_same(decode(data), decode(bytearray(data)), ModelUpdate)
    # A read-only memoryview is viewed too (the model plane's receive buffer).
    buffer = np.frombuffer(data, np.uint8).copy()
    got = decode(memoryview(buffer).toreadonly()).model.tensors
    assert owner(got["big"]) is buffer and not got["big"].flags.writeable
    np.testing.assert_array_equal(got["big"], big)


def test_memory_that_may_change_is_never_viewed():
    data = encode(model_update({"big": np.arange(2**18, dtype=np.float32)}))
    for source in (bytearray(data), memoryview(bytearray(data)), np.frombuffer(data, np.uint8).copy()):
        got = decode(source).model.tensors["big"]
        assert owner(got) is not source and not got.flags.writeable
        np.testing.assert_array_equal(got, np.arange(2**18, dtype=np.float32))


def test_a_message_with_more_elements_than_the_walk_allows_is_copied_and_still_decodes():
    tensors = {str(i): np.zeros(1, np.int8) for i in range(codec._WALK_BUDGET // 2)}
    tensors["big"] = np.arange(2**18, dtype=np.float32)
    data = encode(model_update(tensors))
    limits = Limits(max_tensors=len(tensors))
    assert codec._find_big_tensors(memoryview(data)) is None
    got = decode(data, limits=limits).model.tensors
    assert owner(got["big"]) is not data and len(got) == len(tensors)
    with mock.patch.object(codec, "_WALK_BUDGET", 2 * len(tensors) + 10):
        assert owner(decode(data, limits=limits).model.tensors["big"]) is data


def test_a_big_message_with_another_ext_or_trailing_bytes_fails_as_the_copying_decode_does():
    big = tensor_ext("float32", [2**18], bytes(2**20))
    cases = [
        raw_update({"w": big, "x": msgpack.ExtType(5, b"\0" * 8)}),  # an ext that is no tensor
        raw_update({"w": big}) + b"\0",  # trailing bytes
        raw_update({"w": big})[:-1],  # one byte short
        raw_update({"w": tensor_ext("float32", [2**18 + 1], bytes(2**20))}),  # shape and size differ
        raw_update({"w": big, "v": big}, weight="heavy"),  # a field of the wrong type
    ]
    for data in cases:
        assert len(data) >= codec._VIEW_MESSAGE_BYTES
        assert outcome(data)[0] == "error"
        assert_same_outcome(data)
    placeholder = msgpack.ExtType(codec._IN_PLACE_EXT_CODE, bytes(8))  # a peer's own "placeholder"
    refused(raw_update({"w": big, "p": placeholder}), "unknown msgpack ext type 127")


@pytest.mark.parametrize("tag", sorted(set(message_types()) - NOT_ROUND_TRIPPED))
@SETTINGS
@given(data=st.data())
def test_every_message_type_round_trips_with_its_tensors_in_place(tag, data):
    cls = message_types()[tag]
    msg = data.draw(strategy_for(cls))
    with view_everything:
        assert_same(decode(encode(msg)), msg, cls)


@settings(SETTINGS, max_examples=300)
@given(data=mutated(AllTypes) | mutated(ModelUpdate) | st.binary(max_size=256))
def test_in_place_and_copying_decodes_agree_on_any_bytes(data):
    with view_everything:
        assert_same_outcome(data)
