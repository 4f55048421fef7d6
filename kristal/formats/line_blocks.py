"""Reading a JSONL file in large blocks cut at line ends: decoding and splitting a whole block
is far cheaper than per line, and a block that ends just after an LF never splits a line or a
UTF-8 sequence. Shared by the publisher's sort and the index build; shows progress as it reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kristal.progress import metered

BLOCK = 4 << 20


def lf_blocks(path: Path, description: str) -> Iterator[bytes]:
    """The file's bytes in blocks each ending with an LF, except a last one when the file does
    not end with LF (then that block is the unterminated tail, possibly empty of LFs)."""
    tail = b""
    with open(path, "rb") as source, metered(description, os.fstat(source.fileno()).st_size,
                                             "bytes") as shown:
        while True:
            block = source.read(BLOCK)
            if not block:
                break
            shown.advance(len(block))
            block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                yield block[:cut]
    if tail:
        yield tail
