"""Numbers read from inputs: one policy for every sympos, position, size and CRC.

Python's ``int()`` accepts what no kernel tool writes (``'²'``, ``'٣'``, ``'1_0'``,
surrounding blanks) and raises on strings of more than 4,300 digits; a number from a
file or a command line is therefore read here and nowhere else: ASCII digits only, a
bound that fits what the kernel stores, and an error that names the input.
"""

from klpkit.errors import InputError

#: ``klp_func.old_sympos`` and the ``,<pos>`` of ``.klp.sym`` names are ``unsigned long``
#: in the kernel; no object has anywhere near 2**31 symbols of one name.
SYMPOS_MAX = (1 << 31) - 1
#: a 64-bit field (an address, a size, a CRC widened)
U64_MAX = (1 << 64) - 1

_DEC = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


def shown(text: str, limit: int = 40) -> str:
    """``text`` for an error message: repr-escaped and cut to ``limit`` characters, so
    a 5,000-digit or binary "number" stays a one-line message."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def _fail(text: str, what: str, why: str, where: str | None) -> InputError:
    return InputError(f"{what} {shown(text)}: {why}", path=where)


def parse_decimal(text: str, what: str, *, where: str | None = None, limit: int = U64_MAX) -> int:
    """A decimal number of ASCII digits, at most ``limit``.

    ``what`` names the field ("sympos", "position"), ``where`` the input (a file, or
    ``file:line``); both appear in the error.
    """
    if not text or not _DEC.issuperset(text):
        raise _fail(text, what, "not a decimal number (ASCII digits only)", where)
    significant = text.lstrip("0") or "0"  # int() refuses more than 4,300 digits
    if len(significant) > len(str(limit)) or int(significant) > limit:
        raise _fail(text, what, f"larger than {limit}", where)
    return int(significant)


def parse_hex(text: str, what: str, *, where: str | None = None, limit: int = U64_MAX) -> int:
    """A hexadecimal number (optional ``0x``), ASCII digits only, at most ``limit``."""
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if not digits or not _HEX.issuperset(digits):
        raise _fail(text, what, "not a hexadecimal number", where)
    significant = digits.lstrip("0") or "0"
    if len(significant) > (limit.bit_length() + 3) // 4 or int(significant, 16) > limit:
        raise _fail(text, what, f"larger than {limit:#x}", where)
    return int(significant, 16)
