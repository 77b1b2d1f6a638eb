"""Option negotiation (RFC 2347, 2348, 2349, 7440)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootd.errors import TftpError
from pybootd.tftp.options import Limits, negotiate

LIMITS = Limits(blksize=1468, windowsize=64, timeout=1.0, max_upload=1000)


def test_no_options_no_oack() -> None:
    result = negotiate((), LIMITS, size=10, is_write=False)
    assert result.oack == ()
    assert (result.blksize, result.windowsize) == (512, 1)


def test_only_sent_options_in_client_order_unknown_ignored() -> None:
    asked = (("windowsize", "8"), ("foo", "bar"), ("tsize", "0"), ("blksize", "1024"))
    result = negotiate(asked, LIMITS, size=4242, is_write=False)
    assert result.oack == (("windowsize", "8"), ("tsize", "4242"), ("blksize", "1024"))


def test_clamped_to_configured_maximum() -> None:
    asked = (("blksize", "65464"), ("windowsize", "1000"))
    result = negotiate(asked, LIMITS, size=1, is_write=False)
    assert (result.blksize, result.windowsize) == (1468, 64)
    big = negotiate((("blksize", "70000"),), Limits(blksize=65464), size=1, is_write=False)
    assert big.blksize == 65464


def test_tsize_omitted_when_size_unknown() -> None:
    result = negotiate((("tsize", "0"), ("blksize", "512")), LIMITS, size=None, is_write=False)
    assert result.oack == (("blksize", "512"),)


def test_timeout_granted() -> None:
    result = negotiate((("timeout", "5"),), LIMITS, size=1, is_write=False)
    assert result.timeout == 5.0 and result.oack == (("timeout", "5"),)


@pytest.mark.parametrize("option", [
    ("blksize", "7"), ("blksize", "abc"), ("windowsize", "0"), ("timeout", "0"),
    ("timeout", "256"), ("tsize", "-1"), ("blksize", ""),
    ("blksize", "\u00b2"), ("windowsize", "\u0661"), ("tsize", "9" * 5000),
])
def test_values_that_cannot_be_honoured_get_error_8(option: tuple[str, str]) -> None:
    with pytest.raises(TftpError) as info:
        negotiate((option,), LIMITS, size=1, is_write=False)
    assert info.value.code == 8


def test_upload_over_limit_is_disk_full() -> None:
    with pytest.raises(TftpError) as info:
        negotiate((("tsize", "1001"),), LIMITS, size=None, is_write=True)
    assert info.value.code == 3
    ok = negotiate((("tsize", "1000"),), LIMITS, size=None, is_write=True)
    assert ok.tsize == 1000 and ok.oack == (("tsize", "1000"),)


def test_window_bursts_fit_a_default_receive_buffer() -> None:
    limits = Limits(blksize=65464, windowsize=64)
    big = negotiate((("blksize", "65464"), ("windowsize", "64")), limits, size=1,
                    is_write=False)
    assert big.windowsize == 2 and big.oack == (("blksize", "65464"), ("windowsize", "2"))
    # The cap applies whatever the order of the options.
    first = negotiate((("windowsize", "64"), ("blksize", "8192")), limits, size=1,
                      is_write=False)
    assert first.windowsize == 16 and first.oack[0] == ("windowsize", "16")
    normal = negotiate((("blksize", "1468"), ("windowsize", "64")), limits, size=1,
                       is_write=False)
    assert normal.windowsize == 64


@given(st.sampled_from(["blksize", "tsize", "timeout", "windowsize"]), st.text(max_size=40))
def test_any_value_is_granted_or_refused_with_a_tftp_error(name: str, value: str) -> None:
    try:
        negotiate(((name, value),), LIMITS, size=1, is_write=False)
    except TftpError as exc:
        assert exc.code == 8
