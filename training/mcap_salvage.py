"""What a cut-short MCAP file still holds: the messages written before the cut.

A recording that was killed (power lost, disk full, ``ros2 bag record`` stopped
with SIGKILL) leaves an MCAP file without its summary and footer, and `rosbags`
(like most readers) refuses a file without its footer. The data section is still
a plain sequence of records, each ``opcode (uint8) | length (uint64) | body``, so
it can be read from the start up to the first record the cut left incomplete.

`TruncatedMcap` does that, after the MCAP specification (mcap.dev/spec): schemas
(0x03), channels (0x04) and messages (0x05), at the top level or inside chunks
(0x06, uncompressed, zstd or lz4). A chunk the cut reached is lost whole (its
compressed body is incomplete); the mcap writer of ``ros2 bag record`` closes a
chunk at 768 KiB, so that is a few frames of a camera stream. The file is memory-mapped,
never read into memory at once.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

MAGIC = b"\x89MCAP0\r\n"
_HEADER, _SCHEMA, _CHANNEL, _MESSAGE, _CHUNK = 0x01, 0x03, 0x04, 0x05, 0x06


class McapSalvageError(ValueError):
    """The file is not an MCAP file that can be read from its start."""


@dataclass(frozen=True)
class Channel:
    topic: str
    msgtype: str  # the schema's name, e.g. sensor_msgs/msg/Image
    encoding: str  # the messages' encoding, cdr for ROS 2


def _string(data, offset: int, limit: int) -> Tuple[str, int]:
    """The length-prefixed string at `offset` of a record ending at `limit`, and where it ends."""
    (length,) = struct.unpack_from("<I", data, offset)
    end = offset + 4 + length
    if end > limit:
        raise McapSalvageError("a string runs past the end of its record")
    return bytes(data[offset + 4:end]).decode("utf-8"), end


def _records(data, start: int = 0) -> Iterator[Tuple[int, int, int]]:
    """(opcode, body start, body end) of each complete record of `data` (bytes or mmap) from
    `start`; stops where a record is cut."""
    offset = start
    while offset + 9 <= len(data):
        opcode = data[offset]
        (length,) = struct.unpack_from("<Q", data, offset + 1)
        body = offset + 9
        if body + length > len(data):
            return
        yield opcode, body, body + length
        offset = body + length


class TruncatedMcap:
    """Reads a (possibly cut-short) MCAP file from its start.

    `channels` maps channel ids to `Channel` for every channel seen so far;
    `messages()` yields (channel, log_time_ns, cdr_bytes) in file order, and
    afterwards `complete_bytes` (the end of the last complete record) and
    `file_bytes` say how much of the file could be read.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.channels: Dict[int, Channel] = {}
        self._schemas: Dict[int, str] = {}
        self.file_bytes = self.path.stat().st_size
        self.complete_bytes = 0
        with open(self.path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise McapSalvageError(f"{self.path.name} does not start with the MCAP magic bytes")

    def messages(self, topic: Optional[str] = None) -> Iterator[Tuple[Channel, int, bytes]]:
        """Messages (of `topic`, or all) up to the cut, in file order."""
        from rosbags.rosbag2.storage_mcap import decompress

        with open(self.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for opcode, start, end in _records(data, len(MAGIC)):
                self.complete_bytes = end
                if opcode == _CHUNK:
                    # message_start_time, message_end_time, uncompressed_size, uncompressed_crc
                    _, _, size, crc = struct.unpack_from("<QQQI", data, start)
                    compression, offset = _string(data, start + 28, end)
                    (length,) = struct.unpack_from("<Q", data, offset)
                    raw = decompress(data[offset + 8:offset + 8 + length], compression, size, crc)
                    for inner_opcode, inner_start, inner_end in _records(raw):
                        yield from self._record(inner_opcode, raw, inner_start, inner_end, topic)
                else:
                    yield from self._record(opcode, data, start, end, topic)

    def _record(self, opcode: int, data, start: int, end: int, topic: Optional[str]):
        if opcode == _SCHEMA:
            (schema_id,) = struct.unpack_from("<H", data, start)
            self._schemas[schema_id], _ = _string(data, start + 2, end)
        elif opcode == _CHANNEL:
            channel_id, schema_id = struct.unpack_from("<HH", data, start)
            name, offset = _string(data, start + 4, end)
            encoding, _ = _string(data, offset, end)
            self.channels[channel_id] = Channel(name, self._schemas.get(schema_id, ""), encoding)
        elif opcode == _MESSAGE:
            channel_id, _, log_time, _ = struct.unpack_from("<HIQQ", data, start)
            channel = self.channels.get(channel_id)
            if channel is not None and (topic is None or channel.topic == topic):
                yield channel, log_time, bytes(data[start + 22:end])

    def topics(self) -> Dict[str, str]:
        """{topic: message type} of every channel up to the cut (reads the whole file)."""
        for _ in self.messages(topic=""):  # no topic is named "": no message is copied out
            pass
        return {c.topic: c.msgtype for c in self.channels.values()}
