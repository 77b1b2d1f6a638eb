"""What the TFTP service tests share: a root folder with a small and a big file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "small").write_bytes(b"hello")
    (folder / "big").write_bytes(os.urandom(300_000))
    return folder
