"""Build a symbol database from where users actually have a kernel's symbols: one
builder per source, each in its own module.

=====================  ==============================================  ==============
source                 builder                                         module
=====================  ==============================================  ==============
kernel build tree      :func:`build_from_tree`                         ``tree``
Debian image package   :func:`build_from_debian`                       ``debian_image``
kernel image (bzImage) :func:`build_from_vmlinuz`                      ``vmlinuz``
saved /proc/kallsyms   :func:`build_from_kallsyms` (``_file``)         ``kallsyms``
klp-convert's list     :func:`import_symbols_list`                     ``symbols_list``
System.map (``-dbg``)  through :func:`build_from_debian`               ``system_map``
=====================  ==============================================  ==============

Every builder fills a :class:`klpkit.symbols.model.SymbolSet` and ends in
:func:`klpkit.symbols.finish.finish`, which stores it with
:func:`klpkit.symbols.db.write_db`; see :mod:`klpkit.symbols.rules` for which symbols
and which order, :mod:`klpkit.symbols.speed` for how it stays fast.
"""

from __future__ import annotations

from klpkit.symbols.debian_image import build_from_debian
from klpkit.symbols.kallsyms import build_from_kallsyms, build_from_kallsyms_file
from klpkit.symbols.paths import cache_dir, default_db_path
from klpkit.symbols.symbols_list import import_symbols_list
from klpkit.symbols.tree import build_from_tree
from klpkit.symbols.vmlinuz import build_from_vmlinuz

__all__ = [
    "build_from_debian",
    "build_from_kallsyms",
    "build_from_kallsyms_file",
    "build_from_tree",
    "build_from_vmlinuz",
    "cache_dir",
    "default_db_path",
    "import_symbols_list",
]
