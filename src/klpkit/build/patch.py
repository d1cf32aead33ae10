"""Unified diffs: which files a patch changes, and the patched text of each file.

klpkit applies a patch itself, in memory, to a copy of each file it changes: the
cached kernel source tree is never written, so no error or Ctrl-C can leave a patch
applied to it.  Applying in memory is also what lets the patched text carry
``#line`` directives after every hunk: the lines that follow a hunk keep their
original numbers, so ``__LINE__`` (WARN/BUG's ``__bug_table`` entries,
``might_sleep``), and the ``lineno`` of ``__dyndbg`` descriptors of functions the
patch does not touch do not change, and the object diff does not mistake them
for changed functions.  (Upstream klp-build rewrites the patch the same way.)

Hunks must apply exactly (context and removed lines), possibly at an offset, as
``patch`` does without fuzz: a patch written for another kernel version is
refused rather than half-applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from klpkit.errors import InputError

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")

#: How far from its stated position a hunk may be found (``patch`` searches the
#: whole file; a bound keeps a wrong match in a repetitive file unlikely).
MAX_OFFSET = 2000


class PatchError(InputError):
    """A patch that cannot be read, or does not apply to this source."""


@dataclass
class Hunk:
    old_start: int  # 1-based first line in the original (0 for an empty file)
    old_count: int
    new_start: int
    new_count: int
    lines: list[bytes] = field(default_factory=list)  # with their ' ', '-', '+' marks

    @property
    def old_lines(self) -> list[bytes]:
        return [ln[1:] for ln in self.lines if ln[:1] in (b" ", b"-")]

    @property
    def new_lines(self) -> list[bytes]:
        return [ln[1:] for ln in self.lines if ln[:1] in (b" ", b"+")]


@dataclass
class FilePatch:
    """The hunks of one file.  ``path`` is tree-relative (``a/``/``b/`` stripped)."""

    path: str
    old_path: str | None  # None: the patch creates the file
    new_path: str | None  # None: the patch deletes the file
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def created(self) -> bool:
        return self.old_path is None

    @property
    def deleted(self) -> bool:
        return self.new_path is None


def _strip_prefix(name: bytes, strip: int) -> str | None:
    text = name.split(b"\t", 1)[0].strip().decode("utf-8", "surrogateescape")
    if text == "/dev/null":
        return None
    parts = text.split("/")
    if strip >= len(parts):
        return text
    return "/".join(parts[strip:])


def parse_patch(data: bytes, source: str = "patch", strip: int = 1) -> list[FilePatch]:
    """Parse a unified diff (git or plain ``diff -u``); ``strip`` is patch's ``-p``.

    Everything outside ``---``/``+++`` headers and hunks (mail headers, commit
    message, ``diff --git`` and index lines) is ignored, as ``patch`` ignores it.
    """
    lines = data.splitlines(keepends=False)
    files: list[FilePatch] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.startswith(b"--- ") and i + 1 < n and lines[i + 1].startswith(b"+++ "):
            old = _strip_prefix(line[4:], strip)
            new = _strip_prefix(lines[i + 1][4:], strip)
            path = new if new is not None else old
            if path is None:
                raise PatchError(f"line {i + 1}: both sides are /dev/null", path=source)
            fp = FilePatch(path, old, new)
            files.append(fp)
            i += 2
            while i < n and lines[i].startswith(b"@@"):
                i = _parse_hunk(lines, i, fp, source)
            if not fp.hunks:
                raise PatchError(f"line {i}: no hunk for {path}", path=source)
            continue
        i += 1
    if not files:
        raise PatchError(
            "no unified diff found (expected ---/+++ headers and @@ hunks)", path=source
        )
    seen: set[str] = set()
    for fp in files:
        if fp.path in seen:
            raise PatchError(
                f"{fp.path} is patched twice; merge the hunks into one diff", path=source
            )
        seen.add(fp.path)
    return files


def _parse_hunk(lines: list[bytes], i: int, fp: FilePatch, source: str) -> int:
    m = _HUNK_RE.match(lines[i])
    if not m:
        raise PatchError(f"line {i + 1}: malformed hunk header", path=source)
    old_start, old_count, new_start, new_count = (
        int(m[1]),
        int(m[2] if m[2] is not None else 1),
        int(m[3]),
        int(m[4] if m[4] is not None else 1),
    )
    hunk = Hunk(old_start, old_count, new_start, new_count)
    i += 1
    seen_old = seen_new = 0
    while i < len(lines) and (seen_old < old_count or seen_new < new_count):
        ln = lines[i]
        mark = ln[:1]
        if mark == b"\\":  # "\ No newline at end of file"
            i += 1
            continue
        if ln == b"":  # some mailers drop the space of empty context lines
            ln, mark = b" ", b" "
        if mark not in (b" ", b"-", b"+"):
            break
        hunk.lines.append(ln)
        seen_old += mark in (b" ", b"-")
        seen_new += mark in (b" ", b"+")
        i += 1
    while i < len(lines) and lines[i].startswith(b"\\"):
        i += 1
    if seen_old != old_count or seen_new != new_count:
        raise PatchError(
            f"line {i}: hunk of {fp.path} is truncated "
            f"({seen_old}/{old_count} old, {seen_new}/{new_count} new lines)",
            path=source,
        )
    fp.hunks.append(hunk)
    return i


def _find(lines: list[bytes], want: list[bytes], start: int) -> int | None:
    """Where ``want`` occurs as whole lines, nearest to ``start`` first."""
    if not want:
        return start
    last = len(lines) - len(want)
    for delta in range(MAX_OFFSET + 1):
        for pos in (start + delta, start - delta) if delta else (start,):
            if 0 <= pos <= last and lines[pos : pos + len(want)] == want:
                return pos
    return None


def _line_directive_ok(prev: bytes) -> bool:
    """A ``#line`` may follow ``prev`` unless that continues onto the next line."""
    return not prev.rstrip().endswith(b"\\")


@dataclass
class Applied:
    """The patched text of one file, and the original lines each hunk replaced."""

    text: bytes
    changed_old_lines: list[tuple[int, int]]  # [first, last] 1-based, per hunk


def apply_file_patch(
    fp: FilePatch, original: bytes, *, line_directives: bool = True, source: str = "patch"
) -> Applied:
    """Apply ``fp``'s hunks to ``original``; with ``line_directives``, put ``#line N``
    after each hunk's last change so the lines below keep their original numbers."""
    old = original.split(b"\n")
    trailing_newline = original.endswith(b"\n")
    if trailing_newline:
        old.pop()
    out: list[bytes] = []
    cursor = 0  # next original line (0-based) not yet copied
    offset = 0  # how far hunks were found from their stated place
    ranges = []
    for k, hunk in enumerate(fp.hunks, 1):
        want = hunk.old_lines
        stated = max(hunk.old_start - 1, 0) if hunk.old_count else hunk.old_start
        pos = _find(old, want, stated + offset)
        if pos is None or pos < cursor:
            raise PatchError(
                f"hunk {k} of {fp.path} (line {hunk.old_start}) does not apply "
                "to this kernel's source: is the patch for another version?",
                path=source,
            )
        offset = pos - stated
        out.extend(old[cursor:pos])
        # the hunk: its lines up to the last change, a #line, then the trailing context
        last_change = max(i for i, ln in enumerate(hunk.lines) if ln[:1] in (b"+", b"-"))
        old_no = pos
        for i, ln in enumerate(hunk.lines):
            if ln[:1] in (b" ", b"+"):
                out.append(ln[1:])
            if ln[:1] in (b" ", b"-"):
                old_no += 1
            if i == last_change and line_directives and i + 1 < len(hunk.lines):
                if out and _line_directive_ok(out[-1]):
                    out.append(b"#line %d" % (old_no + 1))
        ranges.append((pos + 1, pos + len(want)))
        cursor = pos + len(want)
        if (
            line_directives
            and i + 1 == len(hunk.lines)
            and last_change == i
            and cursor < len(old)
            and out
            and _line_directive_ok(out[-1])
        ):
            out.append(b"#line %d" % (cursor + 1))
    out.extend(old[cursor:])
    text = b"\n".join(out) + (b"\n" if trailing_newline or not out else b"")
    return Applied(text, ranges)
