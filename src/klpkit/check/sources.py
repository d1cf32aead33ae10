"""What a question to the symbol source may raise when the source cannot answer it.

Rules ask the symbol database more than the kernel needs for a verdict (another
module's vermagic, a module's dependencies, names by prefix); when the source cannot
answer, the rule carries on without that detail instead of failing the check: a
:class:`klpkit.symbols.SymbolDB` raises a ``KlpkitError`` or ``sqlite3.Error`` on a
damaged store; a lighter source (a ``Symbols.list``, a stand-in) lacks the method
(``AttributeError``) or the entry (``LookupError``); a module file the database names
may be gone, unreadable or damaged (``OSError``, ``ElfError``, ``ValueError``).
"""

from __future__ import annotations

import sqlite3

from klpkit.errors import KlpkitError

SOURCE_ERRORS: tuple[type[Exception], ...] = (
    KlpkitError,
    sqlite3.Error,
    OSError,
    LookupError,
    AttributeError,
    TypeError,
    ValueError,
)
