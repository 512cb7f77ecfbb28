"""The incremental stage's loop: read the source, hand what it read to the stream applier,
flush, ACK.

The source is ACKed the offset the target confirmed (about once a second, and at once on
REPLCONF GETACK, after everything before it is applied). A source that sends nothing for
source_timeout, or keeps sending bytes of one command that never completes, is as good as
gone: the session ends and is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from replwatch.errors import TimeoutFailure
from replwatch.sync.lease import LeaseLost
from replwatch.sync.reader import SourceLink

ACK_EVERY = 1.0
# a stream that brings no whole command for source_timeout and less than this of an unfinished
# one is stuck (a big value on a working link grows faster than 64 KiB a source_timeout)
TRICKLE_BYTES = 64 * 1024
# how often the stream checks that the target evicted no key (INFO stats, when it may evict)
EVICTION_CHECK_EVERY = 5.0


class StreamStage(Protocol):
    """A stream applier (stream_apply.StreamApplier, cluster_stream.ClusterStreamApplier)."""

    @property
    def applied(self) -> int: ...

    @property
    def pending_offset(self) -> int: ...

    def consume(self, link: SourceLink) -> bool: ...

    def end_round(self) -> None: ...

    def flush(self, force: bool = False) -> None: ...


class StreamTarget(Protocol):
    def poll_replies(self) -> None: ...

    def drain(self) -> None: ...


def follow_stream(
    task_name: str,
    source_label: str,
    silence: float,
    source: SourceLink,
    target: StreamTarget,
    stream: StreamStage,
    stopping: Callable[[], bool],
    lease_lost: Callable[[], bool],
    check_evictions: Callable[[], None],
) -> None:
    """Apply the stream until `stopping()`; raises to end the session (silence: the
    task's source_timeout)."""
    last_ack = 0.0
    last_data = time.monotonic()
    last_eviction_check = last_data
    # no whole command since (None: the last round took one), and the bytes held then
    unfinished_since: float | None = None
    unfinished_bytes = 0
    source.settimeout(0.05)
    while not stopping():
        if lease_lost():
            raise LeaseLost(f"lease of task {task_name} lost (renewal refused)")
        if time.monotonic() - last_eviction_check >= EVICTION_CHECK_EVERY:
            check_evictions()  # (a no-op for a target that cannot evict)
            last_eviction_check = time.monotonic()
        try:
            # bytes already buffered (read together with +CONTINUE or the snapshot's
            # end) are taken first: waiting for more could wait for the next ping
            if not source.conn.available():
                source.receive()
            last_data = time.monotonic()
        except TimeoutFailure:
            if time.monotonic() - last_data > silence:
                # a master pings its replicas every repl-ping-replica-period (10 s): a
                # source this quiet is paused or cut off without the connection closing
                raise TimeoutFailure(
                    f"no data from the source {source_label} for {silence:g}s (source_timeout)"
                ) from None
            stream.flush()
            target.poll_replies()
            if time.monotonic() - last_ack >= ACK_EVERY:
                source.ack(stream.applied)
                last_ack = time.monotonic()
            continue
        source.feed_buffered()
        while stream.consume(source):
            # REPLCONF GETACK: everything before it applied, then say where we are
            stream.flush(force=stream.pending_offset > stream.applied)
            target.drain()
            source.ack(stream.applied)
            last_ack = time.monotonic()
        stream.end_round()
        if source.raw_pos:  # (feed_buffered set it to 0: this round took a command)
            unfinished_since = None
        elif unfinished_since is None:
            unfinished_since, unfinished_bytes = time.monotonic(), len(source.raw)
        elif time.monotonic() - unfinished_since > silence:
            grew = len(source.raw) - unfinished_bytes
            if grew < TRICKLE_BYTES:
                # bytes keep coming (never silent), a command never completes: a source
                # trickling one command is as stuck as a silent one (a real master's
                # pings are whole commands every 10 s)
                raise TimeoutFailure(
                    f"no whole command from the source {source_label} for "
                    f"{silence:g}s (source_timeout), only {grew} bytes of an unfinished one"
                )
            unfinished_since, unfinished_bytes = time.monotonic(), len(source.raw)
        if not source.conn.available():
            stream.flush()
        target.poll_replies()
        if time.monotonic() - last_ack >= ACK_EVERY:
            source.ack(stream.applied)
            last_ack = time.monotonic()
    stream.flush()
    target.drain()
    source.ack(stream.applied)
