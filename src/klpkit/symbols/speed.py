"""The speed tricks of the symbol database, listed in one place.

A Debian kernel has ~4,000 modules and ~700,000 symbols; a build must stay near 2 s on
one core and a lookup near 15 us.  What makes that possible, and where it lives:

* **records are bytes** (:mod:`klpkit.symbols.pages`): ``name NUL oid pos flags`` with
  fixed-width hex, so plain ``bytes`` order is (name, object, kernel position) order and
  the whole kernel sorts with one ``list.sort()`` and no key function;
* **records are made once, in the module reader's hot loop**
  (:func:`klpkit.symbols.elf_objects.read_module`): one comprehension over the symbol
  table with table lookups (:data:`klpkit.symbols.elf_objects.CORE_HEX` ...) and shared
  hex tables (:func:`klpkit.symbols.pages.pos_hex`, :data:`~klpkit.symbols.pages.FLAGS_HEX`);
  module names stay undecoded bytes;
* **records are gathered as each object is added**
  (:meth:`klpkit.symbols.model.SymbolSet.add_object`), while they are still in the CPU
  cache;
* **pages, not rows**: ~32 records per SQLite row (:func:`klpkit.symbols.pages.make_pages`),
  SQLite's cost being per row and per bound value;
* **the page's check is one C call** (``zlib.adler32``) per page read or written;
* **memory-mapped reads** (:data:`MMAP_SIZE`): a lookup touches one leaf page;
* **a lookup searches its page without splitting it**
  (:func:`klpkit.symbols.pages.payloads_of`) and builds its entries positionally
  (:func:`klpkit.symbols.db.entries`);
* **compressed modules are inflated by threads ahead of the reader**
  (:func:`klpkit.elf.compressed.read_many`: liblzma runs without the GIL);
* **export symbols are found by their names' offsets** in the string table
  (:func:`klpkit.symbols.elf_objects.export_symbols`), not by decoding every name;
* **the cyclic garbage collector is paused** while a build holds ~1M live tuples
  (:func:`gc_paused`).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

MMAP_SIZE = 1 << 30  # map the whole database file (a full kernel's is ~30 MiB)

P = ParamSpec("P")
R = TypeVar("R")


def gc_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with the cyclic garbage collector off: a build allocates ~1M tuples
    that live until the database is written, and the collector's repeated passes
    over them cost a good part of a second while finding no cycles."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper
