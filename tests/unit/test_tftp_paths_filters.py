"""Request paths and [filters] rules."""

from __future__ import annotations

import pytest

from pybootd.errors import TftpError
from pybootd.tftp.blocks import BlockStore
from pybootd.tftp.filters import FilterSet, Rule, indirect_name, split_confined
from pybootd.tftp.netascii import NetasciiDecoder, encode_netascii
from pybootd.tftp.paths import normalize_request_path


@pytest.mark.parametrize(("asked", "expected"), [
    ("pxelinux.0", "pxelinux.0"),
    ("/pxelinux.0", "pxelinux.0"),
    ("./pxelinux.cfg/default", "pxelinux.cfg/default"),
    ("\\boot\\grub\\grub.cfg", "boot/grub/grub.cfg"),
    ("//a//b/./c", "a/b/c"),
    ("/debian-installer/amd64/grub/grub.cfg", "debian-installer/amd64/grub/grub.cfg"),
])
def test_normalized(asked: str, expected: str) -> None:
    assert normalize_request_path(asked) == expected


@pytest.mark.parametrize("asked", [
    "../etc/passwd", "/../../etc/passwd", "..\\..\\etc\\passwd", "a/../../b", "a/..",
    "x\x01y", "bad\nname", "del\x7f", "a" * 2000,
])
def test_escapes_refused_with_access_violation(asked: str) -> None:
    with pytest.raises(TftpError) as info:
        normalize_request_path(asked)
    assert info.value.code == 2


@pytest.mark.parametrize("asked", ["/", ".", "./", "\\"])
def test_empty_names_not_found(asked: str) -> None:
    with pytest.raises(TftpError) as info:
        normalize_request_path(asked)
    assert info.value.code == 1


def test_filters_first_match_wins_and_wildcards() -> None:
    rules = FilterSet([
        Rule("pxelinux.cfg/01-??-*", "/srv/mac.cfg", False),
        Rule("pxelinux.cfg/*", "/srv/default.cfg", False),
        Rule("*.efi", "efi/{filename}", False),
        Rule("startup", "dir/{filename}.cfg", True),
    ])
    assert rules.match("pxelinux.cfg/01-52-54-00-12-34-56").target == "/srv/mac.cfg"  # type: ignore[union-attr]
    assert rules.match("pxelinux.cfg/C000022A").target == "/srv/default.cfg"  # type: ignore[union-attr]
    assert rules.match("grubx64.efi").target == "efi/grubx64.efi"  # type: ignore[union-attr]
    assert rules.match("boot/shim.efi").target == "efi/boot/shim.efi"  # type: ignore[union-attr]
    match = rules.match("startup")
    assert match is not None and match.rule.indirect and match.target == "dir/startup.cfg"
    assert rules.match("pxelinux.0") is None
    assert rules.match("PXELINUX.CFG/x") is None  # case-sensitive


def test_filter_special_characters_are_literal() -> None:
    rules = FilterSet([Rule("a.b[1]+", "x", False)])
    assert rules.match("a.b[1]+") is not None
    assert rules.match("aXb1") is None


def test_indirect_name_first_line_with_expansion() -> None:
    assert indirect_name("# comment\n\n  kernels/{filename}.img \nother\n", "vm1") == \
        "kernels/vm1.img"
    assert indirect_name("# nothing\n", "x") is None


@pytest.mark.parametrize(("template", "expected"), [
    ("/srv/pub/{filename}", ("/srv/pub/", "pub/etc/shadow")),
    ("/srv/img-{filename}.cfg", ("/srv/", "img-pub/etc/shadow.cfg")),
    ("/srv/{filename}/boot/{filename}", ("/srv/", "pub/etc/shadow/boot/pub/etc/shadow")),
    ("{filename}.real", ("", "pub/etc/shadow.real")),
    ("/srv/fixed.cfg", None),  # no {filename}: a fixed file the administrator named
])
def test_split_confined_keeps_the_clients_part_in_the_targets_folder(
        template: str, expected: tuple[str, str] | None) -> None:
    assert split_confined(template, "pub/etc/shadow") == expected


def test_netascii_round_trip_across_chunks() -> None:
    text = b"line1\nline2\r\nbare\rend\r"
    wire = encode_netascii(text)
    assert wire == b"line1\r\nline2\r\0\r\nbare\r\0end\r\0"
    for cut in range(len(wire) + 1):
        decoder = NetasciiDecoder()
        out = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) + decoder.flush()
        assert out == text


def test_block_store_aligned_and_unaligned_feeds() -> None:
    store = BlockStore(4)
    store.feed(b"abcdefgh")
    assert bytes(store.block(2)) == b"efgh"  # type: ignore[arg-type]
    store.feed(b"ij")
    assert store.block(3) is None
    store.feed(b"klm", eof=True)
    assert bytes(store.block(3)) == b"ijkl"  # type: ignore[arg-type]
    assert bytes(store.block(4)) == b"m"  # type: ignore[arg-type]
    assert store.last_block == 4
    store.release_before(3)
    assert store.block(1) is None


def test_block_store_exact_multiple_ends_with_empty_block() -> None:
    store = BlockStore(4)
    store.feed(b"abcd")
    store.feed(b"", eof=True)
    assert store.last_block == 2 and store.block(2) == b""


def test_block_store_segment_holds_whole_blocks() -> None:
    """What a lock-step pump is armed with (connection.FastPath)."""
    store = BlockStore(4)
    store.feed(b"abcdefghij")  # blocks 1, 2; "ij" waits for more
    assert store.segment(2) == (1, b"abcdefgh")
    assert store.segment(3) is None
    store.feed(b"klm", eof=True)
    assert store.segment(3) == (3, b"ijklm") and store.segment(4) == (3, b"ijklm")
    assert store.segment(5) is None
