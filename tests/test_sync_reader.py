"""The snapshot reader's buffer rules over a real socket pair: a diskless payload's end mark
split at every position across reads, keepalive newlines before the payload header, and the
command stream right behind the payload."""

from __future__ import annotations

import socket
import threading

import pytest

from replwatch.errors import RedisError
from replwatch.observe.connection import encode_command
from replwatch.sync.rdb import BytesSource, KeyEntry, RdbEnd, parse_rdb
from replwatch.sync.reader import EOF_MARK_LEN, BufferedSocket, RdbPayload
from replwatch.sync.stream_split import command_length

# a tiny RDB 10: one string key "k" = "v", EOF, zero checksum (not verified)
RDB = b"REDIS0010" + b"\x00\x01k\x01v" + b"\xff" + b"\x00" * 8
MARK = bytes(range(65, 65 + EOF_MARK_LEN))
STREAM = b"*1\r\n$4\r\nPING\r\n"


def feed(chunks: list[bytes]) -> BufferedSocket:
    left, right = socket.socketpair()
    left.settimeout(5)

    def send() -> None:
        for chunk in chunks:
            right.sendall(chunk)
        right.close()

    threading.Thread(target=send, daemon=True).start()
    return BufferedSocket(left, "test")


def events_of(payload: RdbPayload) -> list[object]:
    return list(parse_rdb(payload, raw_limit=1024, verify_checksum=False))


@pytest.mark.parametrize("split", range(1, len(RDB) + EOF_MARK_LEN))
def test_diskless_mark_split_anywhere(split: int) -> None:
    data = RDB + MARK + STREAM
    conn = feed([data[:split], data[split:]])
    payload = RdbPayload(conn, None, MARK)
    events = events_of(payload)
    keys = [e for e in events if isinstance(e, KeyEntry)]
    assert [(k.key, k.value) for k in keys] == [(b"k", b"v")]
    assert isinstance(events[-1], RdbEnd)
    payload.finish()
    assert payload.loaded == len(RDB)
    assert conn.read_exact(len(STREAM)) == STREAM  # the stream is left for the caller


def test_disk_payload_stops_at_its_length() -> None:
    conn = feed([RDB[:5], RDB[5:] + STREAM])
    payload = RdbPayload(conn, len(RDB), None)
    assert payload.remaining == len(RDB)
    events_of(payload)
    payload.finish()
    assert conn.read_exact(len(STREAM)) == STREAM


def test_wrong_end_mark_is_an_error() -> None:
    # the mark never comes: the payload cannot end cleanly (an error, never a silent
    # continuation into a misaligned stream)
    conn = feed([RDB + b"X" * EOF_MARK_LEN])
    payload = RdbPayload(conn, None, MARK)
    with pytest.raises(RedisError):
        events_of(payload)
        payload.finish()


def test_same_events_as_from_bytes() -> None:
    conn = feed([bytes([b]) for b in RDB + MARK])
    from_socket = events_of(RdbPayload(conn, None, MARK))
    from_bytes = list(parse_rdb(BytesSource(RDB), raw_limit=1024, verify_checksum=False))
    assert from_socket == from_bytes


@pytest.mark.parametrize(
    "argv",
    [[b"SET", b"k", b"v"], [b"X" * 12345, b""], [b"a"] * 11, [b"PING"], [b"x" * 9, b"y" * 10]],
)
def test_command_length_is_the_encoded_length(argv: list[bytes]) -> None:
    assert command_length(argv) == len(encode_command(argv))
