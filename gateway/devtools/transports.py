"""A transport with no socket behind it, for running the gateway's relay in-process (the
tests, and tools/statement_path.py)."""

from __future__ import annotations


class MemoryTransport:
    """What a Relay's endpoint writes to: it keeps the bytes (`out`), or with
    ``keep=False`` only counts them and holds the last write (a long benchmark)."""

    def __init__(self, keep: bool = True) -> None:
        self.out = bytearray()
        self.keep = keep
        self.written = 0
        self.last = b""
        self.reading = True

    def write(self, data: bytes) -> None:
        if self.keep:
            self.out += data
        self.written += len(data)
        self.last = data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"  # (asyncio's transports take it as a no-op)
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
