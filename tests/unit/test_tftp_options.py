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
    ("timeout", "256"), ("timeout", "five"), ("blksize", ""),
    ("blksize", "\u00b2"), ("windowsize", "\u0661"), ("windowsize", "many"),
])
def test_values_that_cannot_be_used_are_ignored_not_refused(option: tuple[str, str]) -> None:
    """RFC 2347 section 2: an option not granted is left out of the OACK and
    the transfer goes on with the defaults (as tftpd-hpa and dnsmasq do)."""
    result = negotiate((option, ("blksize", "1024")), LIMITS, size=1, is_write=False)
    assert result.oack == (("blksize", "1024"),)
    alone = negotiate((option,), LIMITS, size=1, is_write=False)
    assert alone.oack == () and (alone.windowsize, alone.timeout) == (1, 1.0)
    assert alone.blksize == 512


@pytest.mark.parametrize("value", ["enable", "0", "-1", "", "\u00b2", "12",
                                   pytest.param("9" * 5000, id="5000-digits")])
def test_tsize_in_a_read_is_a_size_request_whatever_its_value(value: str) -> None:
    """atftp 0.8 --option "tsize enable" sends tsize=enable (field notes);
    RFC 2349 section 4: the client sends 0 and the server answers the size."""
    result = negotiate((("tsize", value), ("blksize", "1468")), LIMITS, size=4242,
                       is_write=False)
    assert result.oack == (("tsize", "4242"), ("blksize", "1468")) and result.tsize == 4242


def test_tsize_in_a_write_that_is_not_a_number_is_ignored() -> None:
    result = negotiate((("tsize", "enable"), ("blksize", "1024")), LIMITS, size=None,
                       is_write=True)
    assert result.oack == (("blksize", "1024"),) and result.tsize is None


def test_upload_over_limit_is_disk_full() -> None:
    with pytest.raises(TftpError) as info:
        negotiate((("tsize", "1001"),), LIMITS, size=None, is_write=True)
    assert info.value.code == 3
    assert info.value.message == "disk full or allocation exceeded"  # RFC 1350
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
def test_any_value_in_a_read_is_granted_or_ignored(name: str, value: str) -> None:
    result = negotiate(((name, value),), LIMITS, size=1, is_write=False)
    assert len(result.oack) <= 1 and all(n == name for n, _ in result.oack)
    assert 8 <= result.blksize <= 1468 and 1 <= result.windowsize <= 64


@given(st.sampled_from(["blksize", "tsize", "timeout", "windowsize"]), st.text(max_size=40))
def test_any_value_in_a_write_is_granted_ignored_or_disk_full(name: str, value: str) -> None:
    try:
        negotiate(((name, value),), LIMITS, size=None, is_write=True)
    except TftpError as exc:
        assert exc.code == 3 and name == "tsize"
