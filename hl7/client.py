"""A small MLLP client: send a message on a kept-open connection and wait for its answer."""

from __future__ import annotations

import re
import socket

from hl7.mllp import FrameReader, frame


class MLLPClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = FrameReader(max_frame_bytes=16 * 1024 * 1024)
        self.pending: list[bytes] = []

    def send(self, message: bytes) -> bytes:
        """Send one message and return the payload of the next frame the peer sends back."""
        self.sock.sendall(frame(message))
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("peer closed the connection before answering")
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def split_messages(content: bytes) -> list[bytes]:
    """The messages in a file: MLLP frames if it has any, else one message per MSH, with
    LF/CRLF segment ends turned into CR."""
    if b"\x0b" in content:
        return FrameReader(max_frame_bytes=len(content) + 1).feed(content)
    text = re.sub(rb"\r\n|\n|\r", b"\r", content)
    parts = re.split(rb"(?:^|\r)(?=MSH)", text)
    return [p.strip(b"\r") + b"\r" for p in parts if p.strip(b"\r")]


def parse_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)
