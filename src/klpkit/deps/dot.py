"""Graphviz output of ``klpkit deps``: the DOT text of a report (nodes coloured by
kind, edges by category, bad edges red) and writing it, rendered by Graphviz's ``dot``
when a picture is asked for and ``dot`` is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from klpkit.deps.model import (
    CAT_A,
    CAT_B,
    CAT_C,
    CAT_D,
    CAT_KLP_OK,
    CAT_KLP_WRONG,
    CAT_OTHER,
    ERROR,
    LIVEPATCH,
    NEEDS,
    OBJECT_DEP,
    OTHER,
    PATCHED,
    TRIGGERS,
    VMLINUX,
    WARN,
    Report,
)
from klpkit.errors import InputError
from klpkit.fileio import write_atomic

NODE_COLOURS: dict[str, str] = {
    VMLINUX: "#9ecae1",
    PATCHED: "#fdd0a2",
    LIVEPATCH: "#a1d99b",
    OTHER: "#d9d9d9",
}
CATEGORY_COLOURS: dict[str | None, str] = {
    CAT_A: "#3182bd",
    CAT_B: "#e6550d",
    CAT_C: "#756bb1",
    CAT_D: "#31a354",
    CAT_OTHER: "#636363",
    CAT_KLP_OK: "#31a354",
    CAT_KLP_WRONG: "red",
}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(report: Report) -> str:
    """Graphviz DOT: nodes coloured by kind, edges by category, bad edges red."""
    lines = [
        "digraph klpkit_deps {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    lines.append(f"  label={_q('klpkit deps: verdict ' + report.verdict)}; labelloc=t;")
    for name, kind in report.nodes.items():
        label = _q(name)[:-1] + (f"\\n({kind})" if kind != name else "") + '"'
        lines.append(
            f"  {_q(name)} [kind={_q(kind)}, fillcolor={_q(NODE_COLOURS[kind])}, label={label}];"
        )
    for e in report.edges:
        attrs = {"kind": e.kind}
        if e.kind == NEEDS:
            label = e.category or ""
            if e.symbols:
                shown = ", ".join(e.symbols[:3]) + (", ..." if len(e.symbols) > 3 else "")
                label += f": {shown}"
            if "depends=" in e.via and not e.symbols:
                label += " (depends=)"
            attrs.update(
                category=e.category or "",
                label=label,
                color=CATEGORY_COLOURS.get(e.category, "black"),
            )
        elif e.kind == TRIGGERS:
            attrs.update(label="load triggers", style="dashed", color="#e6550d")
        elif e.kind == OBJECT_DEP:
            attrs.update(label="needs (object)", style="dotted", color="#636363")
        else:
            attrs.update(
                category=e.category or "",
                label="klp reloc",
                style="dashed",
                arrowhead="empty",
                color=CATEGORY_COLOURS.get(e.category, "black"),
            )
        attrs["verdict"] = e.verdict
        if e.verdict == ERROR:
            attrs.update(color="red", penwidth="2.5", fontcolor="red")
        elif e.verdict == WARN:
            attrs.update(color="orange", penwidth="2")
        body = ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items())
        lines.append(f"  {_q(e.src)} -> {_q(e.dst)} [{body}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


RENDERED = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def write_graph(report: Report, path: str | os.PathLike) -> tuple[Path, Path | None, str | None]:
    """Write the graph.  ``.dot``/``.gv``: DOT only.  ``.png``/``.svg``/``.pdf``: the DOT
    beside it (same name, ``.dot``) and the picture when Graphviz's ``dot`` is installed.
    Returns (dot path, picture path or None, a warning or None)."""
    path = Path(path)
    ext = path.suffix.lower()
    dot_text = to_dot(report).encode("utf-8", "surrogateescape")  # names as read
    if ext in (".dot", ".gv", ""):
        write_atomic(path, dot_text)
        return path, None, None
    fmt = RENDERED.get(ext)
    if fmt is None:
        raise InputError(
            f"--graph: unknown extension {ext!r} (use .dot, .gv, .png, .svg, .pdf)", path=path
        )
    dot_path = path.with_suffix(".dot")
    write_atomic(dot_path, dot_text)
    exe = shutil.which("dot")
    if exe is None:
        return (
            dot_path,
            None,
            (
                f"Graphviz 'dot' is not installed (Debian: apt-get install "
                f"graphviz): wrote only {dot_path}"
            ),
        )
    r = subprocess.run([exe, f"-T{fmt}", str(dot_path)], capture_output=True)
    if r.returncode or not r.stdout:
        raise InputError(
            f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}", path=dot_path
        )
    write_atomic(path, r.stdout)
    return dot_path, path, None
