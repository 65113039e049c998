"""Length-prefixed framing: round trips, and oversize frames refused before the body is read."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.errors import DecodeError
from transport.framing import MAX_BODY_BYTES, encode_frame, frame_prefix, read_frame, split_frame


class FakeStream:
    """`receive_exactly` over fixed bytes, recording every size asked for; EOFError when it runs dry."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requested: list[int] = []

    async def receive_exactly(self, n: int) -> bytes:
        self.requested.append(n)
        if len(self.data) < n:
            raise EOFError(f"stream ended {n - len(self.data)} bytes short")
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def read_all(stream: FakeStream, max_frame_bytes: int = 1 << 20) -> list[bytes]:
    async def main() -> list[bytes]:
        bodies = []
        while stream.data:
            bodies.append(await read_frame(stream.receive_exactly, max_frame_bytes=max_frame_bytes))
        return bodies

    return trio.run(main)


def test_prefix_is_u32_big_endian():
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(memoryview(b"")) == b"\x00\x00\x00\x00"
    assert frame_prefix(0x01020304) == b"\x01\x02\x03\x04"
    with pytest.raises(ValueError):
        frame_prefix(MAX_BODY_BYTES + 1)
    with pytest.raises(ValueError):
        frame_prefix(-1)


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), max_size=5))
def test_frames_round_trip_through_a_stream(bodies):
    stream = FakeStream(b"".join(encode_frame(body) for body in bodies))
    assert read_all(stream) == bodies


def test_empty_body_does_not_ask_for_zero_bytes():
    stream = FakeStream(encode_frame(b""))
    assert read_all(stream) == [b""]
    assert stream.requested == [4]


def test_oversize_frame_is_refused_after_reading_only_the_prefix():
    stream = FakeStream(frame_prefix(2**31) + b"x" * 16)
    with pytest.raises(DecodeError, match=r"^frame of 2147483648 bytes exceeds the 1048576-byte cap$"):
        read_all(stream)
    assert stream.requested == [4]


def test_frame_at_the_cap_is_read():
    stream = FakeStream(encode_frame(b"x" * 10))
    assert read_all(stream, max_frame_bytes=10) == [b"x" * 10]
    stream = FakeStream(encode_frame(b"x" * 11))
    with pytest.raises(DecodeError, match="frame of 11 bytes exceeds the 10-byte cap"):
        read_all(stream, max_frame_bytes=10)


@pytest.mark.parametrize("data", [b"\x00\x00", b"\x00\x00\x00\x05abc"])
def test_truncated_stream_propagates_the_receive_error_unchanged(data):
    # Documented choice: read_frame does not translate the transport's end-of-stream error.
    with pytest.raises(EOFError):
        read_all(FakeStream(data))


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(st.binary(max_size=50), max_size=4), cut=st.integers(0, 300))
def test_split_frame_from_a_buffer(bodies, cut):
    buffer = b"".join(encode_frame(body) for body in bodies)
    assert split_frame(buffer[: min(cut, 3)], max_frame_bytes=100) is None
    got = []
    while (found := split_frame(buffer, max_frame_bytes=100)) is not None:
        body, consumed = found
        got.append(bytes(body))
        buffer = buffer[consumed:]
    assert got == bodies and buffer == b""


def test_split_frame_waits_for_the_whole_body_and_refuses_oversize_early():
    frame = encode_frame(b"hello")
    assert split_frame(frame[:-1], max_frame_bytes=5) is None
    body, consumed = split_frame(bytearray(frame + b"\x00"), max_frame_bytes=5)
    assert bytes(body) == b"hello" and consumed == len(frame)
    with pytest.raises(DecodeError, match="frame of 5 bytes exceeds the 4-byte cap"):
        split_frame(frame[:4], max_frame_bytes=4)
