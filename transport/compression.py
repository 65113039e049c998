"""Lossy and lossless codecs for model payloads: named tensors -> a compact, self-describing message.

`encode_payload(tensors, codec)` turns ``{name: float array}`` into a `CompressedPayload`, a registered
wire message (it also nests inside other messages) that `transport.codec` carries like any other;
`decode_payload` turns it back into float32 arrays of the original shapes. The payload names its codec
and the codec's format version, so a receiver needs no out-of-band agreement, and refuses what it
does not know with a `DecodeError`.

Codecs (floating-point tensors; any other dtype, e.g. an int64 step counter, travels unchanged):

- ``fp32``: the values as float32 (lossless for float32 input).
- ``fp16``: half precision, ~2x smaller; relative error <= 2^-11 within fp16's normal range,
  magnitudes above 65504 are clipped to it (never turned into inf).
- ``int8``: blockwise absmax quantization, ~4x smaller: each block of `block` consecutive values
  (flattened, default 256) stores int8 codes in -127..127 and one float32 scale = absmax / 127;
  the error of every value is at most half its block's scale.
- ``topk``: the ``ceil(fraction * n)`` largest-magnitude entries of each tensor (default fraction
  0.01) as sorted flat indices (int32, or int64 past 2^31 entries) plus float32 values; exact on the
  kept entries, zero elsewhere; ~1 / (2 * fraction) smaller.

Lossy codecs lose information every round unless the sender keeps what it did not send: an
`ErrorFeedback` per destination (peer or stream) adds the residual of the previous payloads to the
next one, so over many rounds the sum of what the receiver decoded tracks the sum of what the sender
meant to send, within one residual.

Everything from the wire is untrusted. `decode_payload` checks the codec and version, each tensor's
method, dtypes, sizes, index ranges and order, and finiteness before it builds anything, bounds what
a small payload can make it allocate (`max_elements`; a top-k payload of a few bytes may claim a huge
shape), and can check names and shapes against the local model (`expected`).

On the libp2p model plane, `transport.body_codec` carries the models of a message as compressed
payloads and names the codec in the transfer header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from transport.codec import DEFAULT_LIMITS, MAX_TENSOR_DIMS, message
from transport.errors import DecodeError

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "CompressedPayload",
    "EncodedTensor",
    "ErrorFeedback",
    "decode_payload",
    "encode_payload",
]

CODECS = ("fp32", "fp16", "int8", "topk")
FORMAT_VERSION = 1  # of every codec's layout; bump it when one changes
RAW = "raw"  # the per-tensor method of non-float tensors, carried unchanged
DEFAULT_BLOCK = 256
DEFAULT_FRACTION = 0.01
MAX_BLOCK = 2**24
_FP16_MAX = float(np.finfo(np.float16).max)
_INT32_LIMIT = 2**31


@dataclass(frozen=True, slots=True, eq=False)
class EncodedTensor:
    """One tensor as a codec wrote it. Which of the optional fields are set depends on `method`."""

    method: str  # the payload's codec, or "raw" for a non-float tensor
    shape: tuple[int, ...]
    values: np.ndarray  # 1-D: all values (fp32, fp16, raw), int8 codes (int8), kept values (topk)
    scales: np.ndarray | None = None  # int8: float32, one per block
    indices: np.ndarray | None = None  # topk: sorted flat indices of `values`
    block: int = 0  # int8: values per block


@message("compressed_payload", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class CompressedPayload:
    """Named tensors under one codec, with the codec's name and format version."""

    codec: str
    version: int
    tensors: dict[str, EncodedTensor]


# --- encoding -------------------------------------------------------------------------------------


def encode_payload(
    tensors: Mapping[str, np.ndarray],
    codec: str,
    *,
    block: int = DEFAULT_BLOCK,
    fraction: float = DEFAULT_FRACTION,
) -> CompressedPayload:
    """`tensors` under `codec` (one of `CODECS`); `block` is for int8, `fraction` for topk.

    Raises ValueError for an unknown codec, bad parameters, or a float tensor with NaN or inf.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    if type(block) is not int or not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"int8 block must be an int in 1..{MAX_BLOCK}, got {block!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"topk fraction must be in (0, 1], got {fraction!r}")
    encoded = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names are str, got {type(name).__name__}")
        array = np.asarray(tensor)
        if array.ndim > MAX_TENSOR_DIMS:
            raise ValueError(f"{name}: {array.ndim} dims; at most {MAX_TENSOR_DIMS} travel")
        if not np.issubdtype(array.dtype, np.floating):
            encoded[name] = EncodedTensor(RAW, array.shape, np.ascontiguousarray(array).reshape(-1))
            continue
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        if not np.isfinite(flat).all():
            raise ValueError(f"{name}: NaN or inf values cannot be encoded")
        encoded[name] = _ENCODERS[codec](flat, array.shape, block=block, fraction=fraction)
    return CompressedPayload(codec, FORMAT_VERSION, encoded)


def _encode_fp32(flat: np.ndarray, shape: tuple[int, ...], **_: object) -> EncodedTensor:
    return EncodedTensor("fp32", shape, flat.copy())  # `flat` may view the caller's tensor


def _encode_fp16(flat: np.ndarray, shape: tuple[int, ...], **_: object) -> EncodedTensor:
    return EncodedTensor("fp16", shape, np.clip(flat, -_FP16_MAX, _FP16_MAX).astype(np.float16))


def _encode_int8(flat: np.ndarray, shape: tuple[int, ...], *, block: int, **_: object) -> EncodedTensor:
    blocks = _blocks(flat, block)
    scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    # An all-zero block has scale 0 and codes 0; divide by 1 there instead of 0.
    divisor = np.where(scales > 0, scales, np.float32(1))[:, None]
    codes = np.clip(np.rint(blocks / divisor), -127, 127).astype(np.int8).reshape(-1)[: flat.size]
    return EncodedTensor("int8", shape, codes, scales=scales, block=block)


def _blocks(flat: np.ndarray, block: int) -> np.ndarray:
    """`flat` as rows of `block` values, the last row padded with zeros."""
    rows = -(-flat.size // block)
    if rows * block == flat.size:
        return flat.reshape(rows, block)
    padded = np.zeros(rows * block, dtype=flat.dtype)
    padded[: flat.size] = flat
    return padded.reshape(rows, block)


def _encode_topk(flat: np.ndarray, shape: tuple[int, ...], *, fraction: float, **_: object) -> EncodedTensor:
    n = flat.size
    k = min(n, math.ceil(fraction * n))
    kept = np.arange(n) if k == n else np.sort(np.argpartition(np.abs(flat), n - k)[n - k :])
    indices = kept.astype(np.int32 if n <= _INT32_LIMIT else np.int64)
    return EncodedTensor("topk", shape, flat[indices], indices=indices)


_ENCODERS = {"fp32": _encode_fp32, "fp16": _encode_fp16, "int8": _encode_int8, "topk": _encode_topk}


# --- decoding -------------------------------------------------------------------------------------


def decode_payload(
    payload: CompressedPayload,
    *,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    max_elements: int = DEFAULT_LIMITS.max_elements,
) -> dict[str, np.ndarray]:
    """The tensors of `payload`: float32 (raw ones in their own dtype), original shapes, writable.

    `expected`, if given, must match the payload's names and shapes exactly (the local model's).
    At most `max_elements` elements are built in all. Anything else is a `DecodeError`.
    """
    if not isinstance(payload, CompressedPayload):
        raise DecodeError(f"not a compressed payload: {type(payload).__name__}")
    if payload.codec not in CODECS:
        raise DecodeError(
            f"unknown payload codec {payload.codec[:40]!r}; this node decodes {', '.join(CODECS)}"
        )
    if payload.version != FORMAT_VERSION:
        raise DecodeError(
            f"{payload.codec} payload format version {payload.version}; this node decodes {FORMAT_VERSION}"
        )
    if expected is not None and set(payload.tensors) != set(expected):
        missing, extra = set(expected) - set(payload.tensors), set(payload.tensors) - set(expected)
        raise DecodeError(f"tensor names differ from the model: missing {_few(missing)}, extra {_few(extra)}")
    total = 0
    for name, tensor in payload.tensors.items():
        shape = tensor.shape
        if len(shape) > MAX_TENSOR_DIMS or not all(type(d) is int and d >= 0 for d in shape):
            raise DecodeError(f"{_short(name)}: shape {shape!r} is not up to {MAX_TENSOR_DIMS} sizes >= 0")
        if expected is not None and tuple(shape) != tuple(expected[name]):
            raise DecodeError(
                f"{_short(name)}: shape {shape} differs from the model's {tuple(expected[name])}"
            )
        total += math.prod(shape)
        if total > max_elements:
            raise DecodeError(f"payload claims more than {max_elements} elements")
    result = {}
    for name, tensor in payload.tensors.items():
        try:
            result[name] = _decode_tensor(tensor, payload.codec)
        except DecodeError as exc:
            raise DecodeError(f"{_short(name)}: {exc}") from None
    return result


def _decode_tensor(tensor: EncodedTensor, codec: str) -> np.ndarray:
    n = math.prod(tensor.shape)
    method, values = tensor.method, tensor.values
    if method not in (codec, RAW):
        raise DecodeError(f"method {method[:40]!r} in a {codec} payload")
    if values.ndim != 1:
        raise DecodeError(f"values must be 1-D, got {values.ndim}-D")
    if (tensor.scales is not None) != (method == "int8") or (tensor.indices is not None) != (
        method == "topk"
    ):
        raise DecodeError(f"{method} tensor with the wrong optional fields")
    if tensor.block != 0 and method != "int8":
        raise DecodeError(f"{method} tensor with a block size")
    if method == RAW:
        if np.issubdtype(values.dtype, np.floating):
            raise DecodeError("a raw tensor must not be floating point (floats go through the codec)")
        _check_size(values, n)
        return values.reshape(tensor.shape).copy()
    if method == "topk":
        return _decode_topk(tensor, n)
    if method == "int8":
        return _decode_int8(tensor, n)
    _check_dtype(values, np.float32 if method == "fp32" else np.float16, "values")
    _check_size(values, n)
    _check_finite(values, "values")
    return values.astype(np.float32).reshape(tensor.shape)  # astype copies: writable, own memory


def _decode_int8(tensor: EncodedTensor, n: int) -> np.ndarray:
    codes, scales, block = tensor.values, tensor.scales, tensor.block
    assert scales is not None
    _check_dtype(codes, np.int8, "codes")
    _check_dtype(scales, np.float32, "scales")
    _check_size(codes, n)
    if not 1 <= block <= MAX_BLOCK:
        raise DecodeError(f"int8 block size {block} outside 1..{MAX_BLOCK}")
    if scales.ndim != 1 or scales.size != -(-n // block):
        raise DecodeError(f"{scales.size} scales for {n} values in blocks of {block}")
    _check_finite(scales, "scales")
    if scales.size and scales.min() < 0:
        raise DecodeError("negative int8 scale")
    if codes.size and codes.min() < -127:
        raise DecodeError("int8 code -128 (codes are -127..127)")
    out = _blocks(codes.astype(np.float32), block)
    out *= scales[:, None]
    return out.reshape(-1)[:n].reshape(tensor.shape)


def _decode_topk(tensor: EncodedTensor, n: int) -> np.ndarray:
    values, indices = tensor.values, tensor.indices
    assert indices is not None
    _check_dtype(values, np.float32, "values")
    if indices.dtype not in (np.dtype("<i4"), np.dtype("<i8")):
        raise DecodeError(f"topk indices must be int32 or int64, got {indices.dtype}")
    if indices.ndim != 1 or indices.size != values.size:
        raise DecodeError(f"{indices.size} indices for {values.size} values")
    if values.size > n:
        raise DecodeError(f"{values.size} kept entries of a {n}-entry tensor")
    _check_finite(values, "values")
    if indices.size:
        if indices[0] < 0 or indices[-1] >= n:
            raise DecodeError(f"topk index out of range 0..{n - 1}")
        if indices.size > 1 and not (np.diff(indices) > 0).all():
            raise DecodeError("topk indices not strictly increasing")
    out = np.zeros(n, dtype=np.float32)
    out[indices] = values
    return out.reshape(tensor.shape)


def _check_dtype(array: np.ndarray, dtype: type, what: str) -> None:
    if array.dtype != np.dtype(dtype):
        raise DecodeError(f"{what} must be {np.dtype(dtype).name}, got {array.dtype.name}")


def _check_size(array: np.ndarray, n: int) -> None:
    if array.size != n:
        raise DecodeError(f"{array.size} values for a tensor of {n} elements")


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise DecodeError(f"NaN or inf in {what}")


def _short(name: str) -> str:
    return repr(name) if len(name) <= 60 else repr(name[:57] + "...")


def _few(names: set[str]) -> str:
    shown = sorted(names)[:5]
    return "{" + ", ".join(_short(n) for n in shown) + (", ..." if len(names) > 5 else "") + "}"


# --- error feedback -------------------------------------------------------------------------------


class ErrorFeedback:
    """Memory of what a lossy codec left out, for one destination (a peer, or one stream of payloads).

    `encode` adds the residual left by the previous payloads to `tensors`, encodes the sum, and keeps
    the new residual (the sum minus what the receiver will decode). So the decoded payloads add up to
    the inputs minus the current residual: nothing is lost for good, only delayed. A tensor whose
    shape changes starts over with no residual. Not thread-safe; use one per destination.
    """

    def __init__(self) -> None:
        self._residual: dict[str, np.ndarray] = {}

    @property
    def residual(self) -> dict[str, np.ndarray]:
        """What has not been sent yet, by tensor name (read-only views)."""
        views = {}
        for name, array in self._residual.items():
            view = array.view()
            view.flags.writeable = False
            views[name] = view
        return views

    def reset(self) -> None:
        self._residual.clear()

    def encode(
        self,
        tensors: Mapping[str, np.ndarray],
        codec: str,
        *,
        block: int = DEFAULT_BLOCK,
        fraction: float = DEFAULT_FRACTION,
    ) -> CompressedPayload:
        """Like `encode_payload`, with the residual of earlier payloads added in (float tensors)."""
        corrected: dict[str, np.ndarray] = {}
        for name, tensor in tensors.items():
            array = np.asarray(tensor)
            if not np.issubdtype(array.dtype, np.floating):
                corrected[name] = array
                continue
            array = array.astype(np.float32)  # a copy: the caller's tensor is never touched
            residual = self._residual.get(name)
            if residual is not None and residual.shape == array.shape:
                array += residual
            corrected[name] = array
        payload = encode_payload(corrected, codec, block=block, fraction=fraction)
        decoded = decode_payload(payload, max_elements=math.inf)  # type: ignore[arg-type]
        self._residual = {
            name: corrected[name] - decoded[name]
            for name in corrected
            if np.issubdtype(corrected[name].dtype, np.floating)
        }
        return payload
