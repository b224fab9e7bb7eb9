"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR>.

Independent of HL7 parsing. FrameReader is fed whatever recv() returned and yields whole
frames: partial frames wait for more bytes, several frames in one read come out one by one,
bytes outside a frame are dropped (and counted), and a frame longer than the limit is an error.
"""

from __future__ import annotations

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


class FrameTooLarge(Exception):
    pass


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK


class FrameReader:
    def __init__(self, max_frame_bytes: int = 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.buffer = bytearray()
        self.discarded = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(START_BLOCK)
            if start < 0:
                self.discarded += len(self.buffer)
                self.buffer.clear()
                break
            if start:
                self.discarded += start
                del self.buffer[:start]
            end = self.buffer.find(END_BLOCK, 1)
            if end < 0:
                if len(self.buffer) > self.max_frame_bytes:
                    self.buffer.clear()
                    raise FrameTooLarge(f"frame exceeds {self.max_frame_bytes} bytes")
                break
            frames.append(bytes(self.buffer[1:end]))
            del self.buffer[: end + len(END_BLOCK)]
        return frames

    @property
    def pending(self) -> bool:
        return bool(self.buffer)
