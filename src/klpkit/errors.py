"""Errors as values a user can act on.

Every failure klpkit reports to a user is a :class:`KlpkitError` whose ``str()``
is one line naming what went wrong and where (file, section, offset, symbol).
The CLI turns it into that line on stderr and an exit code; nothing below the
CLI prints.
"""

import os


class KlpkitError(Exception):
    """A user-facing failure: one line of text, an exit code."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None):
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ElfError(KlpkitError):
    """The input is not an ELF object klpkit can read or write."""


class InputError(KlpkitError):
    """A missing or unreadable input, or an invalid argument."""


class SymbolError(KlpkitError):
    """A symbol that cannot be resolved: unknown, or ambiguous."""
