"""The streaming client of the seed posts' samples (PROTOCOLS §5), as users paste it into notebooks.

``LineIterator`` buffers PayloadPart bytes and returns complete ``\\n``-terminated lines (it spins at
the end of a stream whose last line lacks its newline); ``token_texts`` parses each line from its
first ``{`` (so ``data:`` prefixes and blank lines pass) and yields ``token.text`` unless it is the
stop token.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

STOP_TOKEN = "</s>"


class LineIterator:
    def __init__(self, stream):
        self.byte_iterator = iter(stream)
        self.buffer = io.BytesIO()
        self.read_pos = 0

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            self.buffer.seek(self.read_pos)
            line = self.buffer.readline()
            if line and line[-1] == ord("\n"):
                self.read_pos += len(line)
                return line[:-1]
            try:
                chunk = next(self.byte_iterator)
            except StopIteration:
                if self.read_pos < self.buffer.getbuffer().nbytes:
                    continue
                raise
            if "PayloadPart" not in chunk:
                print("Unknown event type:" + str(chunk))
                continue
            self.buffer.seek(0, io.SEEK_END)
            self.buffer.write(chunk["PayloadPart"]["Bytes"])


def token_texts(lines) -> Iterator[str]:
    """TGI stream lines -> token texts, the way the samples print them."""
    for line in lines:
        if line and b"{" in line:
            data = json.loads(line[line.find(b"{") :].decode("utf-8"))
            if data["token"]["text"] != STOP_TOKEN:
                yield data["token"]["text"]
