"""Message codec: registered frozen dataclasses <-> msgpack bytes.

Wire form of a message is one msgpack array ``[tag, version, field1, field2, ...]`` with the fields
in declaration order. A nested dataclass is an array of its own fields, untagged: the annotation
already says what it is. A tensor (``np.ndarray``) is msgpack ext type 1 whose body is::

    u16 little-endian header length | msgpack header [dtype name, [dims...]] | raw little-endian elements

The bytes come from untrusted peers, so nothing here uses pickle, and `decode` is defensive: for any
input it either returns a message whose every field matches its annotation, or raises `DecodeError`.
`Limits` bounds what one message may make us allocate, checked before the allocation wherever
msgpack lets us (frame size before unpacking, tensor sizes from the ext header before viewing them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, TypeVar

import msgpack
import numpy as np

from transport.errors import DecodeError

__all__ = [
    "DEFAULT_LIMITS",
    "TENSOR_EXT_CODE",
    "Limits",
    "decode",
    "encode",
    "encode_segments",
    "message",
    "message_types",
]

TENSOR_EXT_CODE = 1
MAX_TENSOR_DIMS = 8

# The only dtypes a tensor may have on the wire, by numpy's canonical name. Element bytes are always
# little-endian, so a dtype here is the little-endian variant (the native one on every host we run on).
_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64")
}
_HEADER_LEN = struct.Struct("<H")
_SCALARS = (bool, int, float, str, bytes)


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard caps on what decoding one message may cost; anything beyond them is a `DecodeError`.

    The msgpack length caps bound each container or string that msgpack allocates; the tensor caps
    bound the arrays we build from ext bodies; `max_depth` bounds nesting of arrays and maps.
    """

    max_frame_bytes: int = 512 * 2**20
    max_tensors: int = 10_000  # per message
    max_elements: int = 2**28  # tensor elements per message, all tensors together
    max_str_len: int = 2**20
    max_bin_len: int = 16 * 2**20
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000
    max_depth: int = 16


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class _Registration:
    cls: type
    tag: str
    version: int


_BY_TAG: dict[str, _Registration] = {}
_BY_CLASS: dict[type, _Registration] = {}

_C = TypeVar("_C", bound=type)


def message(tag: str, *, version: int) -> Callable[[_C], _C]:
    """Class decorator: make a frozen dataclass a top-level wire message under `tag` at `version`.

    A peer sending the same tag with another version is refused rather than guessed at: bump the
    version whenever the fields change.
    """
    if not isinstance(tag, str) or not tag:
        raise TypeError("a message tag is a non-empty str")
    if type(version) is not int or version < 0:
        raise TypeError("a message version is a non-negative int")

    def register(cls: _C) -> _C:
        params = getattr(cls, "__dataclass_params__", None)
        if not isinstance(cls, type) or params is None or not params.frozen:
            raise TypeError(f"{cls!r} must be a frozen dataclass to be a wire message")
        if tag in _BY_TAG:
            raise ValueError(f"message tag {tag!r} is already registered to {_BY_TAG[tag].cls.__qualname__}")
        if cls in _BY_CLASS:
            raise ValueError(f"{cls.__qualname__} is already registered as {_BY_CLASS[cls].tag!r}")
        _BY_TAG[tag] = _BY_CLASS[cls] = _Registration(cls, tag, version)
        return cls

    return register


def message_types() -> dict[str, type]:
    """Registered message classes by tag (a copy), e.g. for tests that cover every message type."""
    return {tag: reg.cls for tag, reg in _BY_TAG.items()}


# --- schema ---------------------------------------------------------------------------------------


@cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, resolved annotation) of a dataclass, in wire order; unsupported annotations fail here.

    Resolved lazily (on first encode or decode) so annotations may name classes defined later.
    """
    hints = typing.get_type_hints(cls)
    result = []
    for field in dataclasses.fields(cls):
        if not field.init:
            raise TypeError(f"{cls.__qualname__}.{field.name}: init=False fields cannot travel")
        _check_annotation(hints[field.name], f"{cls.__qualname__}.{field.name}")
        result.append((field.name, hints[field.name]))
    return tuple(result)


def _check_annotation(tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS or tp is np.ndarray or dataclasses.is_dataclass(tp):
        return  # a nested dataclass is checked when it is first used
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        _check_annotation(next(a for a in args if a is not type(None)), where)
        return
    if origin is list and len(args) == 1:
        _check_annotation(args[0], where)
        return
    if origin is tuple:
        for arg in args[:1] if len(args) == 2 and args[1] is Ellipsis else args:
            _check_annotation(arg, where)
        return
    if origin is dict and len(args) == 2 and args[0] in (str, int):
        _check_annotation(args[1], where)
        return
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


# --- encoding -------------------------------------------------------------------------------------


def encode(msg: object) -> bytes:
    """Bytes for a registered message. An unregistered object is a programming error: TypeError."""
    segments = encode_segments(msg)
    return segments[0] if len(segments) == 1 else b"".join(segments)  # one segment: the bytes themselves


def encode_segments(msg: object) -> list[bytes | memoryview]:
    """`encode(msg)` as pieces whose concatenation is exactly those bytes, without copying big tensors.

    A tensor of at least `_SEGMENT_TENSOR_BYTES` that already is C-contiguous little-endian becomes a
    read-only memoryview of its own elements (others are converted once, as `encode` does): the
    arrays must not change until the segments have been consumed. Smaller tensors are copied into
    the msgpack bytes, which is cheaper than a segment of their own.
    """
    reg = _BY_CLASS.get(type(msg))
    if reg is None:
        raise TypeError(f"{type(msg).__qualname__} is not a registered message type")
    values = [getattr(msg, name) for name, _ in _fields(reg.cls)]
    big: list[np.ndarray] = []
    nonce = b""

    def default(obj: object) -> object:
        nonlocal nonce
        if not isinstance(obj, np.ndarray):
            return _encode_default(obj)
        array = _wire_array(obj)
        if array.nbytes < _SEGMENT_TENSOR_BYTES:
            return msgpack.ExtType(TENSOR_EXT_CODE, b"".join(_tensor_parts(array)))
        # A placeholder ext, found again below: a fresh random nonce makes a false match (the same
        # 23 bytes inside an earlier str or bytes field) a 2**-96 event.
        nonce = nonce or os.urandom(_NONCE_BYTES)
        big.append(array)
        return msgpack.ExtType(TENSOR_EXT_CODE, nonce + _INDEX.pack(len(big) - 1))

    skeleton = msgpack.packb([reg.tag, reg.version, *values], default=default, use_bin_type=True)
    if not big:
        return [skeleton]
    segments: list[bytes | memoryview] = []
    pos = 0
    for i, array in enumerate(big):
        placeholder = _PLACEHOLDER_EXT + nonce + _INDEX.pack(i)
        at = skeleton.index(placeholder, pos)
        prefix, data = _tensor_parts(array)
        segments.append(skeleton[pos:at] + _ext_header(len(prefix) + data.nbytes) + prefix)
        segments.append(data)
        pos = at + len(placeholder)
    segments.append(skeleton[pos:])
    return segments


# Tensors from this size on travel as segments of their own (`encode_segments`).
_SEGMENT_TENSOR_BYTES = 64 * 2**10
_NONCE_BYTES = 12
_INDEX = struct.Struct("<Q")
# msgpack ext 8 header of a placeholder: 0xc7, body length, ext type.
_PLACEHOLDER_EXT = bytes((0xC7, _NONCE_BYTES + _INDEX.size, TENSOR_EXT_CODE))


def _encode_default(obj: object) -> object:
    """msgpack fallback for what it cannot pack natively (besides tensors): dataclasses, numpy scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [getattr(obj, name) for name, _ in _fields(type(obj))]
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__qualname__}")


def _wire_array(array: np.ndarray) -> np.ndarray:
    """`array` as it travels: C-contiguous little-endian of an allowed dtype (a copy only if need be)."""
    dtype = _DTYPES.get(_dtype_name(array.dtype))
    if dtype is None:
        raise TypeError(f"tensor dtype {array.dtype} cannot travel; allowed: {', '.join(_DTYPES)}")
    if array.ndim > MAX_TENSOR_DIMS:
        raise ValueError(f"tensor of {array.ndim} dims; at most {MAX_TENSOR_DIMS} travel")
    # No copy when the array already is C-contiguous little-endian (asarray keeps 0-d arrays 0-d).
    return np.asarray(array, dtype=dtype, order="C")


@lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    """numpy's canonical name of `dtype`, which numpy itself computes slowly (microseconds)."""
    return dtype.name


def _tensor_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """The ext body of a wire array: (header length and header, a read-only view of its elements)."""
    elements = array.reshape(-1).view(np.uint8).data.toreadonly()
    return _tensor_header(_dtype_name(array.dtype), array.shape), elements


@lru_cache(maxsize=1024)
def _tensor_header(dtype_name: str, shape: tuple[int, ...]) -> bytes:
    """Header length and header of a tensor ext; models send the same few shapes over and over."""
    header = msgpack.packb([dtype_name, list(shape)])
    return _HEADER_LEN.pack(len(header)) + header


def _ext_header(length: int) -> bytes:
    """msgpack's own header for a tensor ext with a body of `length` bytes (its smallest form)."""
    fixext = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}.get(length)
    if fixext is not None:
        return bytes((fixext, TENSOR_EXT_CODE))
    if length < 2**8:
        return struct.pack(">BBB", 0xC7, length, TENSOR_EXT_CODE)
    if length < 2**16:
        return struct.pack(">BHB", 0xC8, length, TENSOR_EXT_CODE)
    if length < 2**32:
        return struct.pack(">BIB", 0xC9, length, TENSOR_EXT_CODE)
    raise ValueError(f"tensor of {length} bytes is too large for msgpack")


# --- decoding -------------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> object:
    """The message in `data`, validated against its annotations; `DecodeError` for anything else.

    Tensors come back as read-only arrays viewing the ext bytes msgpack copied out of `data` (no
    further copy of the elements). From `_VIEW_MESSAGE_BYTES` on, a message in memory that cannot
    change (`bytes`, or a read-only memoryview whose memory its owner leaves alone) has its big
    tensors view `data` itself, copied by nobody: `_find_big_tensors`.
    """
    view = memoryview(data)
    size = view.nbytes
    if size > limits.max_frame_bytes:
        raise DecodeError(f"message of {size} bytes exceeds the {limits.max_frame_bytes}-byte cap")
    in_place: list[memoryview] | None = None
    if size >= _VIEW_MESSAGE_BYTES and view.readonly and view.c_contiguous:
        found = _find_big_tensors(view.cast("B"))
        if found:
            data, in_place = _without_big_tensors(view.cast("B"), found)
            size = len(data)
    tensors = _TensorHook(limits, in_place)
    try:
        # Every element takes at least one input byte, so `size` is also a cap on every length.
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,  # dict[int, V] fields; keys are validated below
            ext_hook=tensors,
            max_str_len=min(limits.max_str_len, size),
            max_bin_len=min(limits.max_bin_len, size),
            max_array_len=min(limits.max_array_len, size),
            max_map_len=min(limits.max_map_len, size),
            max_ext_len=size,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError(f"{len(exc.extra)} trailing bytes after the message") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgpack's FormatError, StackError, OutOfData-as-ValueError, bad UTF-8, unhashable map keys...
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    return _decode_message(raw, limits)


class _TensorHook:
    """msgpack ext_hook for one decode: ext type 1 -> read-only array viewing the ext bytes.

    `in_place` holds the bodies of the tensors `_without_big_tensors` left out, each a placeholder
    ext naming its index. Counts tensors and elements against the limits from the header, before any
    array exists.
    """

    def __init__(self, limits: Limits, in_place: list[memoryview] | None = None) -> None:
        self._limits = limits
        self._in_place = in_place
        self._tensors = 0
        self._elements = 0

    def __call__(self, code: int, data: bytes | memoryview) -> np.ndarray:
        if code != TENSOR_EXT_CODE:
            if code != _IN_PLACE_EXT_CODE or self._in_place is None:
                raise DecodeError(f"unknown msgpack ext type {code}")
            # Only the walk made exts of this code (it gives up on any other non-tensor ext).
            (index,) = _INDEX.unpack(data)
            data = self._in_place[index]
        limits = self._limits
        self._tensors += 1
        if self._tensors > limits.max_tensors:
            raise DecodeError(f"more than {limits.max_tensors} tensors in one message")
        if len(data) < _HEADER_LEN.size:
            raise DecodeError("tensor ext too short for its header length")
        start = _HEADER_LEN.size + _HEADER_LEN.unpack_from(data)[0]
        if start > len(data):
            raise DecodeError("tensor header runs past the end of the tensor")
        header = _tensor_header_fields(bytes(data[_HEADER_LEN.size : start]))
        if header.largest > limits.max_elements:
            raise DecodeError(
                f"tensor shape {list(header.shape)!r} is not a list of non-negative ints within the cap"
            )
        self._elements += header.count
        if self._elements > limits.max_elements:
            raise DecodeError(f"more than {limits.max_elements} tensor elements in one message")
        body = len(data) - start
        if header.nbytes != body:
            needs = f"{header.name}{list(header.shape)} needs {header.nbytes} bytes"
            raise DecodeError(f"tensor {needs}, has {body}")
        return np.frombuffer(data, header.dtype, header.count, offset=start).reshape(header.shape)


class _TensorHeader(typing.NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    largest: int  # the largest dimension
    count: int  # elements
    nbytes: int


@lru_cache(maxsize=1024)
def _tensor_header_fields(header: bytes) -> _TensorHeader:
    """What a tensor ext's header says, or `DecodeError`.

    Cached: a model's tensors arrive with the same few headers over and over, and a peer sending
    many distinct ones only churns a bounded cache (errors are never cached).
    """
    try:
        fields = msgpack.unpackb(
            header,
            raw=False,
            max_str_len=16,
            max_bin_len=0,
            max_array_len=MAX_TENSOR_DIMS,  # so also at most MAX_TENSOR_DIMS dims
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"malformed tensor header: {exc}") from exc
    if not (isinstance(fields, list) and len(fields) == 2 and isinstance(fields[1], list)):
        raise DecodeError("tensor header is not [dtype, shape]")
    name, shape = fields
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise DecodeError(f"tensor dtype {name!r} is not allowed")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise DecodeError(f"tensor shape {shape!r} is not a list of non-negative ints within the cap")
    count = math.prod(shape)
    return _TensorHeader(name, dtype, tuple(shape), max(shape, default=0), count, count * dtype.itemsize)


# --- big messages: tensors viewed where they lie -------------------------------------------------
#
# msgpack copies every ext body it hands to ext_hook: for a model of hundreds of MiB that is a copy
# of the model into fresh memory, page faults and all. So for a big message in immutable memory a
# walk over its msgpack structure (headers only; strings, bins and ext bodies are stepped over) finds
# the big tensor exts first; msgpack then decodes a copy of the message with each of them replaced
# by a 10-byte placeholder ext, and their arrays view `data` itself. The walk vouches for nothing:
# whenever it meets something it does not expect (malformed bytes, an ext that is no tensor,
# trailing bytes, more elements than `_WALK_BUDGET`) it gives up and the copying decode, which
# reports whatever is wrong, runs as it always did. Either way the same bytes decode to the same
# message or the same error.

_VIEW_MESSAGE_BYTES = 2**20  # messages from this size on are walked
_VIEW_TENSOR_BYTES = 2**16  # tensor ext bodies from this size on are viewed in place
_WALK_BUDGET = 2**16  # msgpack elements, at a fraction of a microsecond each
_IN_PLACE_EXT_CODE = 127  # placeholder ext of a tensor left in place: fixext 8, its index
_IN_PLACE_EXT = bytes((0xD7, _IN_PLACE_EXT_CODE))
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _element_sizes() -> tuple[int, ...]:
    """Total size in bytes of the msgpack elements that one byte fully describes, by that byte; else 0."""
    sizes = [0] * 256
    for b in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):  # ints, nil, bools
        sizes[b] = 1
    for b in range(0xA0, 0xC0):  # fixstr
        sizes[b] = 1 + (b & 0x1F)
    fixed = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
    for b, size in fixed.items():
        sizes[b] = size
    return tuple(sizes)


_ELEMENT_SIZES = _element_sizes()
# Length-prefixed strs and bins: the struct of their length field, by first byte.
_BLOB_LENGTH = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32, 0xD9: _U8, 0xDA: _U16, 0xDB: _U32}
# Exts but fixexts: (struct of the length and the type, header size), by first byte.
_EXT_HEADER = {
    0xC7: (struct.Struct(">BB"), 3),
    0xC8: (struct.Struct(">HB"), 4),
    0xC9: (struct.Struct(">IB"), 6),
}
# Arrays and maps beyond the fix forms: (struct of the count, elements per count, header size).
_CONTAINER_HEADER = {0xDC: (_U16, 1, 3), 0xDD: (_U32, 1, 5), 0xDE: (_U16, 2, 3), 0xDF: (_U32, 2, 5)}


def _find_big_tensors(view: memoryview) -> list[tuple[int, int, int]] | None:
    """(ext start, body start, body end) of every tensor ext with a body of `_VIEW_TENSOR_BYTES` or
    more in the one msgpack object that `view` (format "B") holds, in order; None if there are none
    or the walk gives up (see above)."""
    end = len(view)
    sizes = _ELEMENT_SIZES
    found: list[tuple[int, int, int]] = []
    pos = 0
    left = 1  # elements still to walk: an array of n adds n, a map 2n
    walked = 0
    while left:
        if pos >= end or walked == _WALK_BUDGET:
            return None
        walked += 1
        left -= 1
        first = view[pos]
        size = sizes[first]
        if size:
            pos += size
        elif 0x80 <= first <= 0x9F:  # fixmap, fixarray
            left += (first & 0x0F) * (2 if first < 0x90 else 1)
            pos += 1
        elif first in _BLOB_LENGTH:
            length_field = _BLOB_LENGTH[first]
            if pos + 1 + length_field.size > end:
                return None
            pos += 1 + length_field.size + length_field.unpack_from(view, pos + 1)[0]
        elif first in _CONTAINER_HEADER:
            count_field, per_count, header = _CONTAINER_HEADER[first]
            if pos + header > end:
                return None
            left += per_count * count_field.unpack_from(view, pos + 1)[0]
            pos += header
        else:
            if 0xD4 <= first <= 0xD8:  # fixext 1, 2, 4, 8, 16
                if pos + 2 > end:
                    return None
                length, code, header = 1 << (first - 0xD4), view[pos + 1], 2
            elif first in _EXT_HEADER:
                fields, header = _EXT_HEADER[first]
                if pos + header > end:
                    return None
                length, code = fields.unpack_from(view, pos + 1)
            else:  # 0xc1, never used
                return None
            if code != TENSOR_EXT_CODE:
                return None
            body = pos + header
            if length >= _VIEW_TENSOR_BYTES and body + length <= end:
                found.append((pos, body, body + length))
            pos = body + length
    return found if found and pos == end else None


def _without_big_tensors(
    view: memoryview, found: list[tuple[int, int, int]]
) -> tuple[bytes, list[memoryview]]:
    """`view` with each ext of `found` replaced by a placeholder naming its index; the ext bodies."""
    parts = []
    done = 0
    for index, (start, _, stop) in enumerate(found):
        parts += (view[done:start], _IN_PLACE_EXT, _INDEX.pack(index))
        done = stop
    parts.append(view[done:])
    return b"".join(parts), [view[body:stop] for _, body, stop in found]


def _decode_message(raw: object, limits: Limits) -> object:
    if not isinstance(raw, list) or len(raw) < 2:
        raise DecodeError(f"a message is an array [tag, version, fields...], got {_kind(raw)}")
    tag, version, *values = raw
    if not isinstance(tag, str):
        raise DecodeError(f"message tag must be str, got {_kind(tag)}")
    reg = _BY_TAG.get(tag)
    if reg is None:
        raise DecodeError(f"unknown message tag {_short(tag)}")
    if type(version) is not int:
        raise DecodeError(f"{tag}: version must be int, got {_kind(version)}")
    if version != reg.version:
        raise DecodeError(f"{tag}: got version {version}, this node speaks version {reg.version}")
    return _build(reg.cls, values, tag, 1, limits)


def _build(cls: type, values: list, path: _Path, depth: int, limits: Limits) -> object:
    """An instance of dataclass `cls` from its wire fields; `depth` is that of the `values` array."""
    fields = _field_converters(cls)
    if len(values) != len(fields):
        raise DecodeError(f"{_text(path)}: expected {len(fields)} fields, got {len(values)}")
    kwargs = {
        name: convert(value, (path, segment), depth, limits)
        for (name, segment, convert), value in zip(fields, values, strict=True)
    }
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a __post_init__ refusing the content
        raise DecodeError(f"{_text(path)}: {exc}") from exc


# Where a value sits in a message, for error messages: the tag, or (parent path, segment) with a
# segment ".field" or (key or index,). Formatted only when a value is refused (`_text`): formatting
# the path of every value cost more than checking it.
_Path = str | tuple
# Checks a decoded value against one annotation and returns it (made a float, tuple or dataclass
# where the annotation says so): (value, path, depth of the container holding it, limits).
_Converter = Callable[[object, _Path, int, Limits], object]


def _text(path: _Path) -> str:
    segments = []
    while isinstance(path, tuple):
        path, segment = path
        segments.append(segment if isinstance(segment, str) else f"[{_short(segment[0])}]")
    return path + "".join(reversed(segments))


@cache
def _field_converters(cls: type) -> tuple[tuple[str, str, _Converter], ...]:
    """(name, path segment, converter) of each wire field of dataclass `cls`."""
    return tuple((name, f".{name}", _converter(tp)) for name, tp in _fields(cls))


@cache
def _converter(tp: Any) -> _Converter:
    """The converter for annotation `tp`, made once: decoding then follows no `typing` introspection."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None, the only union _check_annotation lets in
        return _optional(_converter(next(a for a in args if a is not type(None))))
    if tp in _SCALARS or tp is np.ndarray:
        return _exactly(tp)
    if dataclasses.is_dataclass(tp):
        return _nested(lambda value, path, depth, limits: _build(tp, value, path, depth, limits), list)
    if origin is dict:
        return _nested(_map_of(*args), dict)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return _nested(_items_of(_converter(args[0]), origin), list)
    if origin is tuple:
        return _nested(_tuple_of(tuple(_converter(arg) for arg in args)), list)
    raise TypeError(f"unsupported annotation {tp!r}")  # unreachable after _check_annotation


def _optional(convert: _Converter) -> _Converter:
    def optional(value: object, path: _Path, depth: int, limits: Limits) -> object:
        return None if value is None else convert(value, path, depth, limits)

    return optional


def _exactly(tp: type) -> _Converter:
    """A scalar or tensor of type `tp` exactly (bool is no int; msgpack makes nothing subclassed);
    an int is also a float."""

    def exactly(value: object, path: _Path, depth: int, limits: Limits) -> object:
        if type(value) is tp:
            return value
        if tp is float and type(value) is int:
            return float(value)
        raise DecodeError(f"{_text(path)}: expected {_name(tp)}, got {_kind(value)}")

    return exactly


def _nested(convert: _Converter, wire_type: type) -> _Converter:
    """`convert` for a value that travels as an array (`wire_type` list) or a map (dict), one level
    deeper than its container."""
    wire_name = "map" if wire_type is dict else "array"

    def nested(value: object, path: _Path, depth: int, limits: Limits) -> object:
        depth += 1
        if depth > limits.max_depth:
            raise DecodeError(f"{_text(path)}: nested deeper than {limits.max_depth}")
        if type(value) is not wire_type:
            raise DecodeError(f"{_text(path)}: expected {wire_name}, got {_kind(value)}")
        return convert(value, path, depth, limits)

    return nested


def _map_of(key_type: type, value_type: Any) -> _Converter:
    convert_item = _converter(value_type)

    def map_of(value: dict, path: _Path, depth: int, limits: Limits) -> dict:
        result = {}
        for key, item in value.items():
            if type(key) is not key_type:
                raise DecodeError(f"{_text(path)}: expected {key_type.__name__} keys, got {_kind(key)}")
            result[key] = convert_item(item, (path, (key,)), depth, limits)
        return result

    return map_of


def _items_of(convert_item: _Converter, make: type) -> _Converter:
    def items_of(value: list, path: _Path, depth: int, limits: Limits) -> list | tuple:
        items = [convert_item(item, (path, (i,)), depth, limits) for i, item in enumerate(value)]
        return items if make is list else tuple(items)

    return items_of


def _tuple_of(converters: tuple[_Converter, ...]) -> _Converter:
    def tuple_of(value: list, path: _Path, depth: int, limits: Limits) -> tuple:
        if len(value) != len(converters):
            raise DecodeError(f"{_text(path)}: expected {len(converters)} items, got {len(value)}")
        pairs = enumerate(zip(value, converters, strict=True))
        return tuple(convert(item, (path, (i,)), depth, limits) for i, (item, convert) in pairs)

    return tuple_of


def _name(tp: type) -> str:
    return "tensor" if tp is np.ndarray else tp.__name__


def _kind(value: object) -> str:
    """What a decoded value is, in wire terms, for error messages."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, np.ndarray):
        return "tensor"
    return type(value).__name__


def _short(value: object) -> str:
    """repr cut short: strings in error messages come from the peer and may be a megabyte long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
