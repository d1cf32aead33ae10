"""klpkit.numbers: every number read from an input, one policy."""

import pytest

from klpkit.errors import InputError
from klpkit.numbers import SYMPOS_MAX, parse_decimal, parse_hex


def test_plain_numbers():
    assert parse_decimal("0", "sympos") == 0
    assert parse_decimal("42", "sympos", limit=SYMPOS_MAX) == 42
    assert parse_decimal("0" * 5000 + "7", "sympos") == 7  # past int()'s 4,300 digits
    assert parse_hex("0xdeadBEEF", "crc", limit=0xFFFFFFFF) == 0xDEADBEEF
    assert parse_hex("0" * 5000 + "f", "crc") == 15


@pytest.mark.parametrize(
    "text", ["", "²", "٣", "1_0", " 1", "1 ", "-1", "+1", "1e3", "9" * 5000, "2147483648"]
)
def test_refused_decimal_names_the_input(text):
    with pytest.raises(InputError) as e:
        parse_decimal(text, "sympos", where="lp.ko: .klp.sym.cdrom.x", limit=SYMPOS_MAX)
    message = str(e.value)
    assert message.startswith("lp.ko: .klp.sym.cdrom.x: sympos ")
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize("text", ["", "0x", "g", "0x1ffffffff", "f" * 9000, "0x-1", "１"])
def test_refused_hex(text):
    with pytest.raises(InputError, match="crc"):
        parse_hex(text, "crc", where="Module.symvers:3", limit=0xFFFFFFFF)
