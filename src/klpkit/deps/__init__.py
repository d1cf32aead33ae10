"""Dependencies of livepatch modules: classify every external reference, build the
module dependency graph the loader/depmod would build, find pins and load recursions.

This package *analyses*; it reuses the conversion policy of :mod:`klpkit.convert.plan`
(:class:`~klpkit.convert.plan.Classifier`) for every plain undefined symbol, and takes
its verdict on every livepatch relocation from ``klpkit check``'s rules
(:func:`klpkit.check.klp_rules.reference_findings`, on the kernel's rules of
:mod:`klpkit.kernel.klp`): it re-derives neither.  A module's patched objects are read
as the kernel reads them (:func:`klpkit.convert.objects.read_patched_objects`).

:mod:`.model` holds the report, :mod:`.facts` reads the modules and the database,
:mod:`.analysis` decides, :mod:`.graph` builds the graph and finds its cycles,
:mod:`.dot` draws it (:func:`write_graph` is the only writer; the command calls it).

    from klpkit.deps import analyze, to_dot
    report = analyze([Path("lp_cdrom.ko")], db, objects={"lp_cdrom": ["cdrom"]},
                     per_object=None)          # None: decide from the set
    report.verdict                    # 'ok' | 'warn' | 'error'
    report.modules[0].references      # list[Reference]
    report.edges, report.cycles, report.pins
    report.to_json(); to_dot(report)

Categories of a reference (after Petr Mladek's A-D):

=======================  ==================================================  =======
category                 reference                                           verdict
=======================  ==================================================  =======
A                        export of vmlinux                                   ok
B                        export of a module the livepatch patches: the       error
                         loader pins that module (and, for a per-object
                         livepatch, its load triggers the livepatch: cycle)
C                        export of the main (vmlinux) livepatch module of    warn
                         the set, used by a per-object livepatch module
D                        export of another livepatch module of the set:      ok if
                         mirrored by the patched objects' own dependencies   mirrored,
                                                                             else warn
other-module             export of a module that is neither patched nor a    ok if a
                         livepatch (the livepatch loads it)                  patched
                                                                             object
                                                                             needs it,
                                                                             else warn
non-exported-unconverted not exported, still a plain undefined symbol: the   error
                         module loader refuses the module (Unknown symbol)
unresolved               found nowhere, or ambiguous                         error
klp-ok                   livepatch relocation, applied and resolvable        ok, or
                         (check's warnings: warn)                            warn
klp-wrong-object         livepatch relocation check finds an error on: the   error
                         kernel would never apply it (module-gated on an
                         object the klp_patch does not list; since 5.8 the
                         loader applies vmlinux-gated ones whatever the
                         objects) or would refuse it (vmlinux symbol in a
                         module-gated section, symbol missing, bad name)
objects-contradicted     ``--object`` names an object the module does not    error
                         patch (``force``: warn)                             (warn)
=======================  ==================================================  =======

Graph: nodes ``vmlinux``, patched modules, livepatch modules, other modules; edges
``needs`` (undefined symbols -> exporter, plus ``depends=``) labelled with the category,
``triggers`` (a patched module's load loads its per-object livepatch), ``object-dep``
(a patched object's own dependency, from the symbol database) and ``klp`` (livepatch
relocations gated on an object: no load dependency).  A cycle through ``needs`` and
``triggers`` edges is a load recursion.

Per-object: a livepatch module patching one module is *per-object* (loaded by that
module's load, so it gets a ``triggers`` edge) when the set is a split livepatch
(several livepatch modules each patching a different object, e.g. a main one for
vmlinux and one for cdrom: one patch cut by object), or when the caller says so
(``per_object=True``, ``--per-object``).  A lone livepatch for one module is a normal
livepatch: a B reference pins the module but makes no recursion; so are livepatches
*stacked* on one object (a fix and a later fix on top: each its own klp_patch), and a
set holding such a pair is no split set.  ``ModuleInfo.per_object_reason`` says which
rule decided (:func:`decide_per_object`).
"""

from klpkit.deps.analysis import analyze, decide_per_object
from klpkit.deps.dot import to_dot, write_graph
from klpkit.deps.graph import find_cycles
from klpkit.deps.model import (
    CAT_A,
    CAT_B,
    CAT_C,
    CAT_D,
    CAT_KLP_OK,
    CAT_KLP_WRONG,
    CAT_LOCAL,
    CAT_OBJECTS,
    CAT_OTHER,
    CAT_UNRESOLVED,
    ERROR,
    KLP,
    LIVEPATCH,
    NEEDS,
    OBJECT_DEP,
    OK,
    OTHER,
    PATCHED,
    TRIGGERS,
    VMLINUX,
    WARN,
    Edge,
    EdgeKind,
    ModuleInfo,
    NodeKind,
    RefCategory,
    Reference,
    Report,
    Verdict,
    worst,
)

__all__ = [
    "CAT_A",
    "CAT_B",
    "CAT_C",
    "CAT_D",
    "CAT_KLP_OK",
    "CAT_KLP_WRONG",
    "CAT_LOCAL",
    "CAT_OBJECTS",
    "CAT_OTHER",
    "CAT_UNRESOLVED",
    "ERROR",
    "KLP",
    "LIVEPATCH",
    "NEEDS",
    "OBJECT_DEP",
    "OK",
    "OTHER",
    "PATCHED",
    "TRIGGERS",
    "VMLINUX",
    "WARN",
    "Edge",
    "EdgeKind",
    "ModuleInfo",
    "NodeKind",
    "RefCategory",
    "Reference",
    "Report",
    "Verdict",
    "analyze",
    "decide_per_object",
    "find_cycles",
    "to_dot",
    "worst",
    "write_graph",
]
