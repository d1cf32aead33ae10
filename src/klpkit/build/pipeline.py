"""``klpkit build``: a source patch in, a checked livepatch module out.

Stages (each timed in the report):

1. **patch**: read the unified diff; which files it changes, and whether klpkit can
   build a livepatch from them (:func:`scope_of`);
2. **source**: the release's prepared source tree (:mod:`klpkit.build.source`),
   and its symbol database;
3. **compile**: every touched object twice — the pristine one with kbuild's own rule
   (cached in the tree), the patched text with the replayed command line in a scratch
   directory (the tree is never written, so no error leaves a patch applied);
4. **diff**: function by function (:mod:`klpkit.build.objdiff`);
5. **extract**: one livepatch object per touched file (:mod:`klpkit.build.extract`);
6. **link**: generated ``klp_patch`` scaffolding + the objects, kbuild against the headers;
7. **convert**: ``klpkit convert`` turns every reference to what stays in the kernel into
   ``.klp.rela``/``.klp.sym`` with its sympos;
8. **check**: ``klpkit check``; the output is written only when it passes.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from klpkit.build.extract import Extracted, Outside, extract
from klpkit.build.module import ReplacedFunction, c_identifier, link_module, scaffold_source
from klpkit.build.objdiff import ObjectDiff, Refusal, diff_objects
from klpkit.build.objview import ObjectView
from klpkit.build.patch import FilePatch, PatchError, apply_file_patch, parse_patch
from klpkit.build.resolve import KernelNames, kernel_object_of
from klpkit.elf import ElfFile
from klpkit.errors import InputError, KlpkitError
from klpkit.fileio import read_regular, write_atomic
from klpkit.kernel.livepatch import MODULE_NAME_MAX, module_name_from_path

#: The largest patch klpkit reads (a kernel-wide treewide patch is a few MiB).
MAX_PATCH_BYTES = 64 << 20


class BuildRefused(KlpkitError):
    """The patch cannot become a livepatch (exit 1): every reason is in ``reasons``."""

    exit_code = 1

    def __init__(self, message: str, reasons: list[str] | None = None, report=None):
        super().__init__(message)
        self.reasons = reasons or []
        self.report = report


@dataclass
class BuildOptions:
    patches: list[str]
    release: str
    output: str
    name: str | None = None
    sources: list[str] = field(default_factory=list)  # extra .c files (header patches)
    allow_compiler_mismatch: bool = False
    keep_workdir: bool = False
    symbols: str | None = None


@dataclass
class ObjectReport:
    source: str
    kernel_object: str
    diff: ObjectDiff
    extracted: Extracted | None = None
    compile_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        doc = {
            "source": self.source,
            "kernel_object": self.kernel_object,
            "compile_seconds": self.compile_seconds,
            **self.diff.to_json(),
        }
        if self.extracted is not None:
            x = self.extracted
            doc["included"] = {
                "functions": x.functions,
                "data": x.copied_data,
                "sections": x.copied_sections,
                "special_entries": x.special_entries,
                "aliases": x.aliases,
            }
            doc["external_references"] = x.externals
        return doc


@dataclass
class BuildReport:
    release: str
    module: str
    output: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    objects: list[ObjectReport] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    conversion: dict | None = None
    check: dict | None = None
    workdir: str | None = None

    def to_json(self) -> dict:
        return {
            "release": self.release,
            "module": self.module,
            "output": self.output,
            "written": self.output is not None,
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "total_seconds": round(sum(self.stages.values()), 3),
            "objects": [o.to_json() for o in self.objects],
            "ignored_files": self.ignored_files,
            "refusals": self.refusals,
            "conversion": self.conversion,
            "check": self.check,
            "workdir": self.workdir,
        }


# ------------------------------------------------------------------- patch scope
_IGNORED_PREFIXES = ("Documentation/", "tools/", "samples/", "LICENSES/", "scripts/")
_IGNORED_NAMES = ("MAINTAINERS", "CREDITS", "README")


def _refusal(fp: FilePatch, extra_sources: list[str]) -> str | None:
    """Why the file ``fp`` changes cannot be livepatched from source (None: it can)."""
    path = fp.path
    if fp.created or fp.deleted:
        return (
            f"{path}: the patch {'creates' if fp.created else 'deletes'} it; "
            "a livepatch can only change code of existing objects"
        )
    if path.startswith("init/"):
        return f"{path}: init/ code runs once at boot and is freed; a livepatch cannot re-run it"
    if path.endswith((".S", ".s")):
        return (
            f"{path}: assembly: klpkit builds livepatches from C functions "
            "(ftrace redirects C functions with an __fentry__ call)"
        )
    if path.endswith(".h"):
        if extra_sources:
            return None
        return (
            f"{path}: a header: name the .c files that use the change "
            "with --source FILE.c (klpkit cannot tell which of the "
            "kernel's objects include it)"
        )
    if path.endswith(".c"):
        return None
    if os.path.basename(path) in ("Makefile", "Kbuild") or "Kconfig" in path:
        return f"{path}: build configuration: the running kernel's config and objects cannot change"
    return f"{path}: not a C source file"


def scope_of(files: list[FilePatch], extra_sources: list[str]) -> tuple[list[str], list[str]]:
    """(the .c files to rebuild, the files ignored); refuses what cannot be livepatched
    from source with a reason each."""
    sources: list[str] = []
    ignored: list[str] = []
    refused: list[str] = []
    for fp in files:
        if fp.path.startswith(_IGNORED_PREFIXES) or fp.path in _IGNORED_NAMES:
            ignored.append(fp.path)
        elif (why := _refusal(fp, extra_sources)) is not None:
            refused.append(why)
        elif fp.path.endswith(".c"):
            sources.append(fp.path)
    if refused:
        raise BuildRefused(
            refused[0]
            if len(refused) == 1
            else f"{len(refused)} files cannot be livepatched: " + "; ".join(refused),
            refused,
        )
    for extra in extra_sources:
        if not extra.endswith(".c"):
            raise InputError(f"--source {extra}: expected a tree-relative .c file")
        if extra not in sources:
            sources.append(extra)
    return sources, ignored


def _alias_maker(tag: str) -> Callable[[str], str]:
    """The global alias of each replaced function of object ``tag``: the generated
    klp_func tables name the new code by it, unique across the livepatch's objects."""
    return lambda fn: f"__klpkit_new_{tag}_{c_identifier(fn)}"


def module_names(output: str, name: str | None) -> tuple[str, str]:
    """(kbuild name = the .ko's file stem, in-kernel module name) for ``-o``/``--name``."""
    stem = Path(output).name
    if not stem.endswith(".ko"):
        raise InputError(f"-o {output}: a livepatch module's name ends in .ko")
    kbuild = f"livepatch-{name}" if name else stem[:-3]
    if not kbuild or not all(c.isalnum() or c in "-_" for c in kbuild):
        raise InputError(f"module name {kbuild!r}: use letters, digits, '-' and '_'")
    modname = module_name_from_path(kbuild + ".ko")
    if len(modname) > MODULE_NAME_MAX:
        raise InputError(f"module name {modname!r} is longer than {MODULE_NAME_MAX} characters")
    return kbuild, modname


# ------------------------------------------------------------------- the build
class Builder:
    def __init__(self, options: BuildOptions, progress: Callable[[str], None] | None = None):
        self.o = options
        self.progress = progress or (lambda _msg: None)
        kbuild, modname = module_names(options.output, options.name)
        self.kbuild_name = kbuild
        self.report = BuildReport(options.release, modname)
        self.headers: dict[str, bytes] = {}  # patched headers (with --source)

    def _stage(self, name: str, start: float) -> None:
        self.report.stages[name] = self.report.stages.get(name, 0.0) + time.monotonic() - start

    def _check_output(self) -> None:
        """Before any work: the output's directory exists and the output is none of the
        inputs (compared by identity, not by name)."""
        out = Path(self.o.output)
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise InputError("output directory does not exist", path=parent)
        inputs = [*self.o.patches, *([self.o.symbols] if self.o.symbols else [])]
        for path in inputs:
            try:
                same = out.exists() and os.path.samefile(out, path)
            except OSError:
                same = False
            if same:
                raise InputError(
                    f"the output would overwrite the input {path}; choose another -o path", path=out
                )

    def run(self) -> BuildReport:
        o = self.o
        self._check_output()
        t = time.monotonic()
        patches = []
        for p in o.patches:
            patches.extend(parse_patch(read_regular(p, MAX_PATCH_BYTES, "patch"), source=p))
        sources, ignored = scope_of(patches, o.sources)
        self.report.ignored_files = ignored
        by_path = {fp.path: fp for fp in patches}
        self._stage("patch", t)

        from klpkit.build.source import SourceTree

        t = time.monotonic()
        self.progress(f"source tree of {o.release}")
        tree = SourceTree.prepare(
            o.release, allow_compiler_mismatch=o.allow_compiler_mismatch, progress=self.progress
        )
        patched_texts = {}
        for fp in patches:
            if fp.path.endswith(".h") and o.sources:
                if not tree.exists(fp.path):
                    raise PatchError(
                        f"{fp.path} is not in the {o.release} source "
                        f"({tree.version}): is the patch for another kernel?"
                    )
                self.headers[fp.path] = apply_file_patch(
                    fp, tree.read_original(fp.path), source=fp.path
                ).text
        for src in sources:
            if not tree.exists(src):
                raise PatchError(
                    f"{src} is not in the {o.release} source "
                    f"({tree.version}): is the patch for another kernel?"
                )
            original = tree.read_original(src)
            change = by_path.get(src)
            patched_texts[src] = (
                apply_file_patch(change, original, source=src).text if change else original
            )
        db = self._open_db()
        self._stage("source", t)

        workdir = Path(tempfile.mkdtemp(prefix=f"klpkit-build-{self.kbuild_name}-"))
        try:
            return self._build(tree, db, sources, patched_texts, workdir)
        finally:
            if o.keep_workdir:
                self.report.workdir = str(workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            db.close()

    def _open_db(self):
        """The release's symbol database: ``--symbols``, else the cached one, built from
        the image package (and the headers' Module.symvers) when missing or written by
        another klpkit version (it is a cache)."""
        from klpkit.symbols import SymbolDB, SymbolDBError
        from klpkit.symbols.build import default_db_path

        path = default_db_path(self.o.release, self.o.symbols)
        if self.o.symbols:
            return SymbolDB.open(path, release=self.o.release)
        try:
            return SymbolDB.open(path, release=self.o.release)
        except (SymbolDBError, InputError):
            pass
        self.progress(f"symbol database of {self.o.release} (from the image package)")
        from klpkit import debian
        from klpkit.symbols import build_from_debian

        build_from_debian(
            debian.ensure_image(self.o.release),
            None,
            debian.headers_symvers(self.o.release),
            db=path,
            progress=False,
            release=self.o.release,
        ).close()
        return SymbolDB.open(path, release=self.o.release)

    def _compile(self, tree, sources, patched_texts, workdir):
        """Every pristine and patched object, two compiles at a time."""
        jobs = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
            for src in sources:
                jobs[(src, "original")] = ex.submit(tree.compile_original, src)
                jobs[(src, "patched")] = ex.submit(
                    tree.compile_patched, src, patched_texts[src], workdir / "patched", self.headers
                )
            return {key: fut.result() for key, fut in jobs.items()}

    def _build(self, tree, db, sources, patched_texts, workdir: Path) -> BuildReport:
        rep = self.report
        t = time.monotonic()
        self.progress(f"compiling {len(sources)} object(s), original and patched")
        compiled = self._compile(tree, sources, patched_texts, workdir)
        self._stage("compile", t)

        t = time.monotonic()
        views = {}
        for src in sources:
            orig_elf = ElfFile.read(compiled[(src, "original")].object)
            patched_elf = ElfFile.read(compiled[(src, "patched")].object)
            diff = diff_objects(orig_elf, patched_elf, src)
            orig_view = ObjectView(orig_elf)
            kobj = kernel_object_of(db, orig_view, src)
            rep.objects.append(
                ObjectReport(
                    src,
                    kobj,
                    diff,
                    compile_seconds={
                        k: round(compiled[(src, k)].seconds, 2) for k in ("original", "patched")
                    },
                )
            )
            views[src] = (orig_view, ObjectView(patched_elf))
        self._stage("diff", t)
        refusals = [r for obj in rep.objects for r in obj.diff.refusals]
        self._refuse_if(refusals)
        if not any(obj.diff.replaced for obj in rep.objects):
            raise BuildRefused(
                "nothing to patch: the patch changes no function of the "
                f"compiled objects ({', '.join(sources)})",
                report=rep,
            )

        t = time.monotonic()
        module_dir = workdir / "module"
        module_dir.mkdir()
        objects: dict[str, list[ReplacedFunction]] = {}
        files = []
        for i, obj in enumerate(rep.objects):
            if not obj.diff.functions:
                continue
            orig_view, patched_view = views[obj.source]
            names = KernelNames(db, obj.kernel_object, orig_view, obj.source)
            tag = c_identifier(f"{i}_{obj.kernel_object}")
            outside = Outside(names.outside, _alias_maker(tag), names.is_module_symbol)
            self._refuse_if(
                [
                    Refusal(
                        fc.name,
                        "weak-overridden",
                        f"{fc.name}: a __weak default that {obj.kernel_object} overrides with a "
                        "strong definition elsewhere: the running kernel never calls this code; "
                        "patch the override",
                    )
                    for fc in obj.diff.replaced
                    if names.weak_overridden(orig_view.by_name[fc.original][0])
                ]
            )
            x = obj.extracted = extract(patched_view, obj.diff, outside)
            self._refuse_if(x.refusals)
            for fc in obj.diff.replaced:
                objects.setdefault(obj.kernel_object, []).append(
                    ReplacedFunction(fc.original, names.sympos(fc.original), x.aliases[fc.name])
                )
            path = module_dir / f"klpkit_patch_{i}.o"
            x.elf.write(path)
            files.append(path)
        self._stage("extract", t)

        t = time.monotonic()
        self.progress("linking the livepatch module")
        from klpkit.debian import ensure_headers

        desc = f"klpkit build of {', '.join(os.path.basename(p) for p in self.o.patches)}"
        ko = link_module(
            module_dir,
            self.kbuild_name,
            files,
            ensure_headers(self.o.release),
            scaffold_source(objects, desc),
        )
        self._stage("link", t)
        return self._convert_and_check(ko, db, workdir)

    def _refuse_if(self, refusals: list[Refusal]) -> None:
        if refusals:
            lines = [r.message for r in refusals]
            self.report.refusals = lines
            raise BuildRefused(
                lines[0]
                if len(lines) == 1
                else f"{len(lines)} changes cannot be livepatched: " + "; ".join(lines),
                lines,
                report=self.report,
            )

    def _convert_and_check(self, ko: Path, db, workdir: Path) -> BuildReport:
        from klpkit.check import Severity, check_module, first_error
        from klpkit.convert import PlanOptions, convert_file

        rep = self.report
        t = time.monotonic()
        converted = workdir / f"{self.kbuild_name}.klp.ko"
        plan, result, _elf = convert_file(ko, converted, db, PlanOptions())
        rep.conversion = {
            "ok": plan.ok,
            "counts": plan.counts(),
            "errors": plan.errors,
            "warnings": plan.warnings,
            "klp_sections": result.klp_sections if result else [],
            "dropped_depends": result.dropped_depends if result else [],
        }
        self._stage("convert", t)
        if not plan.ok:
            rep.refusals = list(plan.errors)
            raise BuildRefused(
                f"converting the linked module failed: {plan.errors[0]}", plan.errors, report=rep
            )
        t = time.monotonic()
        findings = check_module(converted, db)
        rep.check = {
            "ok": first_error(findings) is None,
            "findings": [
                {"severity": str(f.severity), "rule": f.rule, "message": f.message}
                for f in findings
                if f.severity is not Severity.NOTE
            ],
        }
        self._stage("check", t)
        err = first_error(findings)
        if err is not None:
            raise BuildRefused(
                f"the built livepatch fails klpkit check: {err.rule}: {err.message}",
                [err.message],
                report=rep,
            )
        write_atomic(self.o.output, converted.read_bytes())
        rep.output = self.o.output
        return rep
