"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 1): <VT> message <FS><CR>.

Independent of HL7 parsing. FrameReader is fed whatever recv() returned and yields whole
frames: partial frames wait for more bytes, several frames in one read come out one by one,
bytes outside a frame are set aside (kept up to KEEP_BYTES for the journal), and a frame
longer than the limit raises FrameTooLarge carrying its first KEEP_BYTES.
"""

from __future__ import annotations

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
KEEP_BYTES = 64 * 1024


class FrameTooLarge(Exception):
    def __init__(self, limit: int, head: bytes) -> None:
        super().__init__(f"frame exceeds {limit} bytes (RIS_MLLP_MAX_FRAME_BYTES)")
        self.head = head


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK


class FrameReader:
    def __init__(self, max_frame_bytes: int = 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.buffer = bytearray()
        self.discarded = 0
        self._discarded_bytes = bytearray()
        self._searched = 1  # where to resume looking for END_BLOCK in a partial frame

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while self.buffer:
            if self.buffer[0:1] != START_BLOCK:
                start = self.buffer.find(START_BLOCK)
                self._discard(len(self.buffer) if start < 0 else start)
                self._searched = 1
                continue
            end = self.buffer.find(END_BLOCK, self._searched)
            if end < 0:
                self._searched = max(1, len(self.buffer) - 1)
                if len(self.buffer) - 1 > self.max_frame_bytes:
                    head = bytes(self.buffer[1 : 1 + KEEP_BYTES])
                    self.buffer.clear()
                    raise FrameTooLarge(self.max_frame_bytes, head)
                break
            if end - 1 > self.max_frame_bytes:
                head = bytes(self.buffer[1 : 1 + KEEP_BYTES])
                self.buffer.clear()
                raise FrameTooLarge(self.max_frame_bytes, head)
            frames.append(bytes(self.buffer[1:end]))
            del self.buffer[: end + len(END_BLOCK)]
            self._searched = 1
        return frames

    def _discard(self, n: int) -> None:
        self.discarded += n
        room = KEEP_BYTES - len(self._discarded_bytes)
        if room > 0:
            self._discarded_bytes += self.buffer[: min(n, room)]
        del self.buffer[:n]

    def take_discarded(self) -> bytes:
        """The bytes set aside since the last call (at most KEEP_BYTES), and reset the count."""
        data = bytes(self._discarded_bytes)
        self._discarded_bytes.clear()
        self.discarded = 0
        return data

    @property
    def pending(self) -> bool:
        return bool(self.buffer)
