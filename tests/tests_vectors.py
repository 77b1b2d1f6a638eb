"""Access to the captured test vectors under ``tests/vectors``."""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "vectors"


def vector_bytes(name: str, kind: str = "dhcp") -> bytes:
    return (VECTORS / kind / name).read_bytes()
