"""What a model-plane transfer body is, and the codec name its header gives it, with models compressed or not.

A transfer header names the body's codec, so the receiver needs no out-of-band agreement and decodes
whatever a sender chose, whatever it would choose itself:

- ``p2pfl-msgpack/1`` (`CODEC_NAME`): the message as `transport.codec` encodes it, big tensors sent
  from the arrays themselves (`codec.encode_segments`, no copy). Every message without a model, and
  every message when compression is off, travels like this.
- ``p2pfl-msgpack/1+<codec>`` for a codec of `transport.compression` (fp32, fp16, int8, topk): a
  `CompressedMessage`, the message encoded with the tensors of each `ModelPayload` in it left out,
  plus those tensors as one `CompressedPayload` each, in the order the payloads appear.

Models are found by walking the message's dataclass fields, nested dataclasses included (not inside
lists or dicts), so protocol messages need no change to travel compressed, and a receiver hands the
application the very message type it would have got uncompressed: float32 tensors of the original
shapes (non-float tensors unchanged), only the values as lossy as the codec.

Lossy codecs keep an `ErrorFeedback` per destination peer (`BodyEncoder`): what one payload left out
is added to the next one sent to the same peer, so the models a peer decodes add up to the models we
meant to send. Residuals are memory (a model's worth per peer), so at most `feedback_peers` are kept
(least recently used dropped) and `forget` drops a peer's when it disconnects. A residual is kept
even when its transfer then fails. Top-k keeps only the largest entries of each tensor: a protocol
that sends whole models (gossip learning, MoDeST) hands its peers mostly-zero models with it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from transport import codec
from transport.compression import (
    CODECS,
    DEFAULT_BLOCK,
    DEFAULT_FRACTION,
    MAX_BLOCK,
    CompressedPayload,
    ErrorFeedback,
    decode_payload,
    encode_payload,
)
from transport.errors import DecodeError
from transport.messages import ModelPayload

__all__ = [
    "CODEC_NAME",
    "COMPRESSIONS",
    "NO_COMPRESSION",
    "BodyEncoder",
    "CompressedMessage",
    "CompressionConfig",
    "decode_body",
    "is_known_codec",
]

log = logging.getLogger(__name__)

CODEC_NAME = "p2pfl-msgpack/1"
COMPRESSIONS = ("none", *CODECS)
_COMPRESSED_NAMES = {f"{CODEC_NAME}+{name}": name for name in CODECS}
_LOSSLESS = "fp32"  # exact for float32 models: no residual worth keeping


def is_known_codec(name: str) -> bool:
    """Whether this node decodes bodies whose header names codec `name`."""
    return name == CODEC_NAME or name in _COMPRESSED_NAMES


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """How this node sends models: `codec` "none" or one of `transport.compression.CODECS`.

    `int8_block` is the int8 codec's block size, `topk_fraction` the share of entries top-k keeps;
    `error_feedback` keeps lossy codecs' residuals for at most `feedback_peers` peers.
    """

    codec: str = "none"
    int8_block: int = DEFAULT_BLOCK
    topk_fraction: float = DEFAULT_FRACTION
    error_feedback: bool = True
    feedback_peers: int = 32

    def __post_init__(self) -> None:
        if self.codec not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.codec!r}; known: {', '.join(COMPRESSIONS)}")
        if type(self.int8_block) is not int or not 1 <= self.int8_block <= MAX_BLOCK:
            raise ValueError(f"int8_block must be an int in 1..{MAX_BLOCK}, got {self.int8_block!r}")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction!r}")
        if self.feedback_peers < 1:
            raise ValueError(f"feedback_peers must be >= 1, got {self.feedback_peers!r}")


NO_COMPRESSION = CompressionConfig()


@codec.message("compressed_message", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class CompressedMessage:
    """A message (`message`, encoded, its models' tensors left out) and those tensors (`models`)."""

    message: bytes
    models: list[CompressedPayload]


Segments = list[bytes | memoryview]


class BodyEncoder:
    """Encodes the messages one node sends; keeps the error-feedback residuals per destination."""

    def __init__(self, config: CompressionConfig = NO_COMPRESSION) -> None:
        self.config = config
        self._feedback: OrderedDict[Hashable, dict[int, ErrorFeedback]] = OrderedDict()
        self._lock = trio.Lock()  # one compression at a time touches the residuals

    async def encode(self, message: object, *, destination: Hashable) -> tuple[str, Segments]:
        """(codec name for the header, body segments) of `message` for `destination`.

        Uncompressed bodies view the message's big tensors (they must not change until sent).
        Compression runs in a worker thread: it reads every value of the model.
        """
        if self.config.codec == "none":
            return CODEC_NAME, codec.encode_segments(message)
        models: list[ModelPayload] = []
        stripped = _map_models(message, partial(_leave_out_tensors, models))
        if not models:
            return CODEC_NAME, codec.encode_segments(message)
        async with self._lock:
            feedback = self._feedback_for(destination, len(models))
            try:
                payloads = await trio.to_thread.run_sync(self._compress, models, feedback)
            except ValueError as exc:  # NaN or inf in the model: the receiver refuses it uncompressed
                log.warning("sending a model uncompressed: %s", exc)
                return CODEC_NAME, codec.encode_segments(message)
        body = CompressedMessage(codec.encode(stripped), payloads)
        return f"{CODEC_NAME}+{self.config.codec}", codec.encode_segments(body)

    def forget(self, destination: Hashable) -> None:
        """Drop the residuals kept for `destination` (it went away; it may come back as a new node)."""
        self._feedback.pop(destination, None)

    def _feedback_for(self, destination: Hashable, count: int) -> list[ErrorFeedback | None]:
        cfg = self.config
        if not cfg.error_feedback or cfg.codec == _LOSSLESS:
            return [None] * count
        kept = self._feedback.get(destination)
        if kept is None:
            kept = self._feedback[destination] = {}
            while len(self._feedback) > cfg.feedback_peers:
                self._feedback.popitem(last=False)
        self._feedback.move_to_end(destination)
        return [kept.setdefault(i, ErrorFeedback()) for i in range(count)]

    def _compress(
        self, models: Sequence[ModelPayload], feedback: Sequence[ErrorFeedback | None]
    ) -> list[CompressedPayload]:
        cfg = self.config
        params = {"block": cfg.int8_block, "fraction": cfg.topk_fraction}
        return [
            encode_payload(model.tensors, cfg.codec, **params)
            if memory is None
            else memory.encode(model.tensors, cfg.codec, **params)
            for model, memory in zip(models, feedback, strict=True)
        ]


async def decode_body(
    codec_name: str, body: bytes | bytearray | memoryview, *, limits: codec.Limits = codec.DEFAULT_LIMITS
) -> object:
    """The message in a transfer body whose header names `codec_name`; `DecodeError` for anything else.

    A compressed body is decoded in a worker thread, and builds at most `limits.max_elements`
    tensor elements in all.
    """
    if codec_name == CODEC_NAME:
        return codec.decode(body, limits=limits)
    compression = _COMPRESSED_NAMES.get(codec_name)
    if compression is None:
        raise DecodeError(f"unknown body codec {codec_name[:40]!r}")
    return await trio.to_thread.run_sync(_decompress, compression, body, limits)


def _decompress(compression: str, body: bytes | bytearray | memoryview, limits: codec.Limits) -> object:
    envelope = codec.decode(body, limits=limits)
    if not isinstance(envelope, CompressedMessage):
        raise DecodeError(f"a {compression} body must be a compressed message, got {type(envelope).__name__}")
    message = codec.decode(envelope.message, limits=limits)
    found: list[ModelPayload] = []
    _map_models(message, partial(_leave_out_tensors, found))
    if len(found) != len(envelope.models):
        raise DecodeError(f"{len(envelope.models)} compressed models for a message with {len(found)}")
    if any(model.tensors for model in found):
        raise DecodeError("a compressed message carries tensors outside its compressed models")
    budget = limits.max_elements
    decoded = []
    for payload in envelope.models:
        if payload.codec != compression:
            raise DecodeError(f"a {payload.codec[:40]!r} model in a body the header calls {compression}")
        tensors = decode_payload(payload, max_elements=budget)
        budget -= sum(tensor.size for tensor in tensors.values())
        decoded.append(tensors)
    filled = iter(decoded)
    return _map_models(message, lambda model: dataclasses.replace(model, tensors=next(filled)))


def _leave_out_tensors(found: list[ModelPayload], model: ModelPayload) -> ModelPayload:
    found.append(model)
    return dataclasses.replace(model, tensors={})


def _map_models(obj: object, change: Callable[[ModelPayload], ModelPayload]) -> object:
    """`obj` with every `ModelPayload` in its dataclass fields (nested ones too) replaced by `change(it)`.

    Payloads are visited in field order, the same on both ends; objects without one are returned as
    they are, not copied.
    """
    if isinstance(obj, ModelPayload):
        return change(obj)
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        new = _map_models(value, change)
        if new is not value:
            changes[field.name] = new
    return dataclasses.replace(obj, **changes) if changes else obj
