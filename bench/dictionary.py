"""Make the preset dictionary payloads are packed with (`streams.packing`): the payloads of one notification that a
real saga sends by email and Slack (on a dev server, with the local sinks), with a made-up subject and body, the
longest last (deflate finds the end of a dictionary nearest).

    .venv/bin/python -m bench.dictionary streams/payloads-2.zdict

A released dictionary never changes: write a new number, and make it `streams.packing.PACKING`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.store import sample
from domain import DirectoryEntry

ENTITY = DirectoryEntry.model_validate(
    {
        "id": "customer-4821",
        "name": "Dana Reyes",
        "email": "dana.reyes@example.org",
        "slack": {"workspace": "T024BE7LD", "channel": "C08QX4M2N"},
        "channels": {"email": "send", "slack": "send"},
    }
)
"""Nobody the benches send to: the dictionary knows the payloads' shapes, not their values."""
SUBJECT = "Your weekly digest is ready"
BODY = "Three new comments on the quarterly report; the export you asked for can be downloaded from the dashboard."
DICTIONARY_BYTES = 16_384
"""What the packer's window holds (`streams.packing`): a longer dictionary's start would go unused."""


async def dictionary() -> bytes:
    with tempfile.TemporaryDirectory(prefix="notify-dictionary-") as folder:
        records = await sample(Path(folder), ENTITY, SUBJECT, BODY)
    payloads = sorted((r.payload.encode() for r in records), key=len)
    return b"".join(payloads)[-DICTIONARY_BYTES:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="where to write the dictionary")
    target = parser.parse_args().file
    if target.exists():
        parser.error(f"{target} exists: a dictionary once made never changes; write a new number")
    target.write_bytes(asyncio.run(dictionary()))
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
