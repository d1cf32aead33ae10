"""Numbers in names and arguments: a position of 5,000 digits (past Python's int()
limit), a non-ASCII digit ('²' passes str.isdigit() and fails int(); '٣' passes int()
and the kernel's %lu refuses it), a position wider than unsigned long.  Every parser
says so in one line naming the input; no command raises."""

from __future__ import annotations

import pytest

from klpkit.cli import klp_convert_main, main
from klpkit.convert import parse_map_entry, parse_map_text
from klpkit.convert.annotations import Intermediate, parse_intermediate
from klpkit.convert.symbol_stream import StreamedSymbols
from klpkit.errors import InputError
from klpkit.kernel.kver import kernel_version, parse_kernel_version
from klpkit.kernel.livepatch import KlpSymbolName, parse_klp_symbol_name
from tests.badinput.conftest import BIG


@pytest.mark.parametrize(
    "pos, sympos",
    [
        ("3", 3),
        ("0", 0),
        ("18446744073709551615", (1 << 64) - 1),  # the largest unsigned long
        ("18446744073709551616", None),  # wraps in the kernel's sscanf: never meant
        (BIG, None),
        ("0" * 5000 + "7", 7),  # leading zeros: past int()'s limit, still a number
        ("\u00b2", None),
        ("\u0663", None),
        ("1_0", None),
        (" 1", None),
    ],
)
def test_klp_symbol_positions(pos, sympos):
    got = parse_klp_symbol_name(f".klp.sym.vmlinux.state_show,{pos}")
    assert got == (None if sympos is None else KlpSymbolName("vmlinux", "state_show", sympos))


@pytest.mark.parametrize("sep", [",", "."])
def test_intermediate_positions(sep):
    base = f".klp.sym.rela.vmlinux.vmlinux.state_show{sep}"
    assert parse_intermediate(base + "2") == Intermediate(
        "vmlinux", "vmlinux", "state_show", 2, "v2" if sep == "," else "v3"
    )
    big = parse_intermediate(base + BIG)
    assert isinstance(big, str)
    assert "position '1111" in big and "larger than 2147483647" in big
    assert len(big) < 400  # the 5,000 digits are cut in the message
    sup = parse_intermediate(base + "\u00b2")
    assert isinstance(sup, str) and sup.endswith("not a decimal number (ASCII digits only)")


@pytest.mark.parametrize(
    "pos, why",
    [
        (BIG, "larger than 2147483647"),
        ("2147483648", "larger than 2147483647"),
        ("\u00b2", "not a decimal number (ASCII digits only)"),
        ("\u0663", "not a decimal number (ASCII digits only)"),
        ("-1", "not a decimal number (ASCII digits only)"),
    ],
)
def test_map_positions(pos, why):
    got = parse_map_entry(f"state_show=vmlinux,{pos}", "--map")
    assert isinstance(got, str) and got.startswith("--map: position ") and got.endswith(why)
    choices, errors = parse_map_text(f"# x\nstate_show=vmlinux,{pos}\n", "m.txt")
    assert choices == [] and len(errors) == 1
    assert errors[0].startswith("m.txt:2: position ") and errors[0].endswith(why)


def test_kernel_versions():
    assert parse_kernel_version("6.1.0-47-amd64") == (6, 1)
    with pytest.raises(InputError, match=r"kernel version major '9999.*larger than 65535"):
        parse_kernel_version("9" * 5000 + ".1")
    with pytest.raises(InputError, match="is not MAJOR.MINOR"):
        parse_kernel_version("\u0666.1")
    # a module's vermagic that does not parse falls back to the default
    assert kernel_version(None, "9" * 5000 + ".1", "\u0666.1", None) == (6, 1)


KLPKIT_LIST = """\
klp-convert-symbol-data.0.1
*vmlinux
printk
state_show
state_show
*.klpkit
release\t6.1.0-test
object\tvmlinux\tvmlinux\t\t\t{nrows}\tBCACAC
export\tvmlinux\tprintk\tEXPORT_SYMBOL\t\t{crc}
"""


@pytest.mark.parametrize(
    "nrows, crc, message",
    [
        ("3", "12345678", None),
        (BIG, "12345678", "symbol count '1111"),
        ("\u0663", "12345678", "symbol count '\u0663': not a decimal number"),
        ("3", "\u00b2", "export CRC '\u00b2': not a hexadecimal number"),
        ("3", "1" + "0" * 8, "export CRC '100000000': larger than 0xffffffff"),
    ],
)
def test_streamed_symbol_list_numbers(tmp_path, nrows, crc, message):
    path = tmp_path / "Symbols.list"
    path.write_text(KLPKIT_LIST.format(nrows=nrows, crc=crc))
    if message is None:
        syms = StreamedSymbols(path, ["printk", "state_show"], "6.1.0-test")
        assert [e.exported for e in syms.lookup("printk")] == [True]
        assert len(syms.lookup("state_show")) == 2
        return
    with pytest.raises(InputError) as err:
        syms = StreamedSymbols(path, ["printk", "state_show"], "6.1.0-test")
        syms.lookup("state_show")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def _commands(path, db):
    return [
        ["inspect", path],
        ["inspect", "--json", path],
        ["check", "--symbols", db, path],
        ["check", "--json", "--symbols", db, path],
        ["deps", "--symbols", db, path],
        ["deps", "--json", "--symbols", db, path],
        ["convert", "--dry-run", "--symbols", db, "--object", "cdrom", path],
        ["convert", "--dry-run", "--json", "--symbols", db, path],
    ]


def test_every_command_on_number_mutants(number_modules, small_db, capsys, tmp_path):
    """In-process: an exception would escape main(); every outcome is an exit code and
    lines that start with the tool's name on stderr."""
    db = str(small_db.path)
    for key, path in number_modules.items():
        for argv in _commands(str(path), db):
            rc = main(argv)
            out, err = capsys.readouterr()
            assert rc in (0, 1, 2), (key, argv, rc, err)
            assert all(ln.startswith("klpkit: ") for ln in err.splitlines()), (key, argv, err)
        out_path = tmp_path / f"{key}.ko"
        for argv in ([str(path), str(out_path)], [str(small_db.path), str(path), str(out_path)]):
            rc = klp_convert_main(argv)
            _out, err = capsys.readouterr()
            assert rc in (0, 1, 2), (key, argv, rc, err)
            assert all(ln.startswith("klp-convert: ") for ln in err.splitlines()), (key, err)


def test_malformed_positions_are_reported(number_modules, small_db, capsys, tmp_path):
    """What each command says about a position it cannot read."""
    db = str(small_db.path)
    rc = main(["inspect", "--json", str(number_modules["klp_big"])])
    out, _err = capsys.readouterr()
    assert rc == 0 and '"sympos": null' in out
    rc = main(["check", "--symbols", db, str(number_modules["klp_super"])])
    out, _err = capsys.readouterr()
    assert rc == 1
    for key in ("inter_big", "inter_super", "inter3_big", "inter3_super"):
        out_path = tmp_path / f"{key}.ko"
        rc = klp_convert_main([str(number_modules[key]), str(out_path)])
        _out, err = capsys.readouterr()
        assert rc == 1 and not out_path.exists()
        assert "klp-convert: intermediate symbol '.klp.sym.rela.vmlinux.vmlinux.state_show" in err
        assert "position" in err


def test_map_arguments(number_modules, small_db, capsys, tmp_path):
    path = str(number_modules["klp_wide"])
    db = str(small_db.path)
    out_path = tmp_path / "o.ko"
    rc = main(["convert", path, "-o", str(out_path), "--symbols", db, "--map", f"x=cdrom,{BIG}"])
    _out, err = capsys.readouterr()
    assert rc == 2 and not out_path.exists()
    assert err.startswith("klpkit: error: --map: position '1111") and err.count("\n") == 1
    map_file = tmp_path / "map.txt"
    map_file.write_text("x=cdrom,\u00b2\n")
    rc = main(["convert", path, "-o", str(out_path), "--symbols", db, "--map-file", str(map_file)])
    _out, err = capsys.readouterr()
    assert rc == 2 and not out_path.exists()
    assert err == (
        f"klpkit: error: {map_file}:1: position '\u00b2': not a decimal number "
        "(ASCII digits only)\n"
    )
