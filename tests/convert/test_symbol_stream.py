"""The drop-in's streamed Symbols.list (klpkit.convert.symbol_stream): the same answers
as importing the file into a database, for both formats, across block boundaries, with
the same errors; fast (hand-written lists)."""

from __future__ import annotations

import pytest

from klpkit.convert import symbol_stream
from klpkit.convert.symbol_stream import StreamedSymbols
from klpkit.errors import InputError
from klpkit.symbols import import_symbols_list
from klpkit.symbols.symbols_list import export_symbols_list

# klpkit's format, by hand: init-only symbols ('!'), a name twice in one object, an
# object split in two runs, export records, a __ksymtab_ line past the counted rows
KLPKIT_LIST = """\
klp-convert-symbol-data.0.1
*vmlinux
printk
state_show
state_show
*mod
init_fn
f
f
*other
f
*mod
g
__ksymtab_f
*.klpkit
release\t6.1.0-test
build_id\tabc
source\ttest
object\tvmlinux\tvmlinux\t\t\t3\tBCACAC
object\tmod\tmodule\t/lib/mod.ko\tother\t4\t!ACACBCBC
export\tvmlinux\tprintk\tEXPORT_SYMBOL\t\t12345678
export\tmod\tf\tEXPORT_SYMBOL_GPL\tNS\t0000abcd
object\tother\tmodule\t\t\t1\tBC
"""

NAMES = ["printk", "state_show", "init_fn", "f", "g", "__ksymtab_f", "nowhere"]


def _same_answers(path, tmp_path, names=NAMES, release="6.1.0-test"):
    db = import_symbols_list(path, release=release, db=tmp_path / "ref.sqlite")
    st = StreamedSymbols(path, names, release)
    try:
        for name in names:
            for obj in (None, "vmlinux", "mod", "other", "missing"):
                for init in (False, True):
                    assert st.lookup(name, obj, include_init=init) == db.lookup(
                        name, obj, include_init=init
                    ), (name, obj, init)
        for obj in db.objects():
            assert st.module_depends(obj) == db.module_depends(obj)
            info = db.object_info(obj)
            assert st.object_info(obj) == dict(info, path=info["path"]), obj
        assert st.release == db.release and st.machine is None
    finally:
        db.close()
    return st


def test_klpkit_format_matches_the_import(tmp_path):
    path = tmp_path / "Symbols.list"
    path.write_text(KLPKIT_LIST)
    st = _same_answers(path, tmp_path)
    init = st.lookup("init_fn", include_init=True)
    assert [(e.core, e.sympos, e.load_sympos) for e in init] == [(False, 0, 1)]
    assert st.lookup("init_fn") == []
    f = st.lookup("f", "mod")
    assert [(e.bind, e.sympos, e.count, e.exported, e.namespace, e.crc) for e in f] == [
        ("local", 1, 2, False, None, None),
        ("global", 2, 2, True, "NS", 0xABCD),
    ]
    assert st.lookup("g", "mod")[0].sympos == 1  # the object's second run
    assert st.meta["source"] == "symbols-list(test)" and st.build_id == "abc"


def test_nm_format_matches_the_import(small_list, tmp_path):
    names = [
        "printk",
        "state_show",
        "cdrom_check_events",
        "debug",
        "dup_static",
        "scsi_device_get",
        "__ksymtab_printk",
        "other_static",
        "nope",
    ]
    st = _same_answers(small_list, tmp_path, names)
    assert st.lookup("cdrom_check_events")[0].exported
    assert not st.lookup("cdrom_read_mech_status", "cdrom")[0].exported  # rescanned


def test_our_export_of_a_database(small_db, tmp_path):
    path = tmp_path / "exported.list"
    export_symbols_list(small_db, path)
    _same_answers(
        path,
        tmp_path,
        ["printk", "state_show", "debug", "dup_static", "cdrom_check_events", "other_static"],
        "6.1.0-test",
    )


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_block_boundaries(tmp_path, monkeypatch, block):
    monkeypatch.setattr(symbol_stream, "BLOCK", block)
    path = tmp_path / "Symbols.list"
    path.write_text(KLPKIT_LIST.rstrip("\n"))  # no final newline either
    _same_answers(path, tmp_path)


def test_a_name_nobody_announced_is_found_by_a_second_pass(tmp_path):
    path = tmp_path / "Symbols.list"
    path.write_text(KLPKIT_LIST)
    st = StreamedSymbols(path, ["printk"], "6.1.0-test")
    assert [e.sympos for e in st.lookup("state_show")] == [1, 2]
    assert st.lookup("f", "mod")[1].exported


@pytest.mark.parametrize(
    "text, release",
    [
        ("not a symbols list\n*vmlinux\n", None),
        ("klp-convert-symbol-data.0.1\nstray\n*vmlinux\nprintk\n", "6.1.0-test"),
        (KLPKIT_LIST.replace("object\tother\tmodule\t\t\t1\tBC\n", ""), None),
        (KLPKIT_LIST.replace("\t4\t!ACACBCBC", "\t9\t!ACACBCBC"), None),
        (KLPKIT_LIST, "6.1.0-other"),
        ("klp-convert-symbol-data.0.1\n*vmlinux\nprintk\n", None),
    ],
)
def test_errors_are_the_imports(tmp_path, text, release):
    """(The klpkit record of an object is checked when a needed name is in it: here
    'f' is in 'mod'.)"""
    path = tmp_path / "Symbols.list"
    path.write_text(text)
    with pytest.raises(InputError) as want:
        import_symbols_list(path, release=release, db=tmp_path / "x.sqlite")
    with pytest.raises(InputError) as got:
        StreamedSymbols(path, ["printk", "f"], release)
    assert str(got.value) == str(want.value)
