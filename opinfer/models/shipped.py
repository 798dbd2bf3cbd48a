"""The models' tokenizers, shipped in their folders (opinfer/models/<model>/tokenizer.json.gz).

A client rebuilds a job's input from its own request (SDK `verify`), which
needs the model's tokenizer and chat template but never its weights, so
each model folder carries its tokenizer data (extracted from the model's
package) and its spec's `tokenizer()` reads that: clients, the coordinator
and the SDK need no weights package for it. The files are generated, never
edited: `python -m opinfer.models.shipped export` (with the model packages
installed) calls each model's `parts.export_tokenizer()`, and
tests/unit/test_client_tokenizers.py fails when a file differs from what
the installed package gives.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path


def read(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def write(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))   # mtime 0: the same bytes on every export


def export() -> list[Path]:
    from opinfer import models

    out = []
    for spec in models.specs():
        if hasattr(spec.parts, "export_tokenizer"):
            out.append(spec.parts.export_tokenizer())
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["export"]:
        sys.exit("usage: python -m opinfer.models.shipped export   (with the model packages installed)")
    for p in export():
        print(f"wrote {p} ({p.stat().st_size} bytes)")
