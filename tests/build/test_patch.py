"""Unified diffs: parsing, in-memory application with #line directives, and the scope
rules of klpkit build (which files can become a livepatch)."""

from __future__ import annotations

import pytest

from klpkit.build.patch import PatchError, apply_file_patch, parse_patch
from klpkit.build.pipeline import BuildRefused, module_names, scope_of
from klpkit.errors import InputError

ORIG = b"".join(b"line %d\n" % i for i in range(1, 41))


def _patch(path: str, hunks: str) -> bytes:
    return f"From: someone\nSubject: fix\n\n---\n--- a/{path}\n+++ b/{path}\n{hunks}".encode()


def test_parse_git_style_patch():
    data = _patch("fs/x.c", "@@ -3,3 +3,4 @@ ctx\n line 3\n+new\n line 4\n line 5\n")
    (fp,) = parse_patch(data)
    assert fp.path == "fs/x.c" and not fp.created and not fp.deleted
    assert (fp.hunks[0].old_start, fp.hunks[0].old_count, fp.hunks[0].new_count) == (3, 3, 4)


def test_apply_adds_line_directives_after_each_hunk():
    data = _patch(
        "x.c",
        "@@ -3,3 +3,4 @@\n line 3\n+new A\n line 4\n line 5\n"
        "@@ -20,3 +21,2 @@\n line 20\n-line 21\n line 22\n",
    )
    (fp,) = parse_patch(data)
    out = apply_file_patch(fp, ORIG).text.decode().splitlines()
    i = out.index("new A")
    assert out[i + 1] == "#line 4" and out[i + 2] == "line 4"
    j = out.index("line 20")
    assert out[j + 1] == "#line 22" and out[j + 2] == "line 22"
    plain = apply_file_patch(fp, ORIG, line_directives=False).text.decode().splitlines()
    assert "#line" not in "\n".join(plain) and len(plain) == 40


def test_hunk_found_at_an_offset_and_refused_when_absent():
    (fp,) = parse_patch(_patch("x.c", "@@ -10,2 +10,3 @@\n line 13\n+new\n line 14\n"))
    assert b"new\n" in apply_file_patch(fp, ORIG).text
    (bad,) = parse_patch(_patch("x.c", "@@ -10,2 +10,3 @@\n line 99\n+new\n line 100\n"))
    with pytest.raises(PatchError, match="does not apply"):
        apply_file_patch(bad, ORIG, source="x.c")


def test_no_line_directive_after_a_continued_line():
    orig = b"#define X(a) \\\n\t(a)\nint y;\n"
    (fp,) = parse_patch(
        _patch("x.c", "@@ -1,3 +1,3 @@\n #define X(a) \\\n-\t(a)\n+\t(a + 1)\n int y;\n")
    )
    text = apply_file_patch(fp, orig).text
    assert b"#line" not in text.split(b"int y;")[0].split(b"(a + 1)")[0]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"just text\n", "no unified diff"),
        (_patch("x.c", "@@ -1,3 +1,4 @@\n line 1\n+x\n"), "truncated"),
        (_patch("x.c", "@@ bogus @@\n line 1\n"), "no hunk|malformed"),
    ],
)
def test_malformed_patches(data, message):
    with pytest.raises(PatchError, match=message):
        parse_patch(data, source="p.patch")


def test_scope_refuses_what_cannot_be_livepatched():
    files = parse_patch(
        _patch("drivers/a.c", "@@ -1 +1 @@\n-a\n+b\n")
        + b"--- a/Documentation/x.rst\n+++ b/Documentation/x.rst\n@@ -1 +1 @@\n-a\n+b\n"
    )
    sources, ignored = scope_of(files, [])
    assert sources == ["drivers/a.c"] and ignored == ["Documentation/x.rst"]
    for path, why in (
        ("include/linux/a.h", "--source"),
        ("arch/x86/lib/a.S", "assembly"),
        ("init/main.c", "init/"),
        ("drivers/Makefile", "build configuration"),
        ("drivers/Kconfig", "build configuration"),
    ):
        with pytest.raises(BuildRefused, match=why):
            scope_of(parse_patch(_patch(path, "@@ -1 +1 @@\n-a\n+b\n")), [])
    new_file = b"--- /dev/null\n+++ b/drivers/new.c\n@@ -0,0 +1 @@\n+int x;\n"
    with pytest.raises(BuildRefused, match="creates"):
        scope_of(parse_patch(new_file), [])
    header = parse_patch(_patch("include/linux/a.h", "@@ -1 +1 @@\n-a\n+b\n"))
    assert scope_of(header, ["drivers/a.c"]) == (["drivers/a.c"], [])


def test_module_names():
    assert module_names("out/livepatch-fix.ko", None) == ("livepatch-fix", "livepatch_fix")
    assert module_names("x.ko", "cve-1") == ("livepatch-cve-1", "livepatch_cve_1")
    for bad in ("x.o", "bad name.ko"):
        with pytest.raises(InputError):
            module_names(bad, None)
    with pytest.raises(InputError, match="longer than"):
        module_names("livepatch-" + "x" * 60 + ".ko", None)


def test_output_must_not_be_an_input_nor_in_a_missing_directory(tmp_path):
    from klpkit.build.pipeline import Builder, BuildOptions

    patch = tmp_path / "livepatch-p.ko"
    patch.write_bytes(_patch("drivers/a.c", "@@ -1 +1 @@\n-a\n+b\n"))
    with pytest.raises(InputError, match="overwrite the input"):
        Builder(BuildOptions([str(patch)], "6.1.0-47-amd64", str(patch))).run()
    assert patch.read_bytes().startswith(b"From:")
    with pytest.raises(InputError, match="output directory does not exist"):
        Builder(BuildOptions([str(patch)], "6.1.0-47-amd64", str(tmp_path / "no" / "x.ko"))).run()


@pytest.mark.parametrize("bad", ["/dev/zero", "fifo", "dir"])
def test_patch_input_must_be_a_regular_file(tmp_path, bad):
    import os

    from klpkit.build.pipeline import Builder, BuildOptions

    path = {"/dev/zero": "/dev/zero", "fifo": str(tmp_path / "p.fifo"), "dir": str(tmp_path)}[bad]
    if bad == "fifo":
        os.mkfifo(path)
    with pytest.raises(InputError, match="regular file|directory"):
        Builder(BuildOptions([path], "6.1.0-47-amd64", str(tmp_path / "x.ko"))).run()
