"""``klpkit build``: from a source patch to a checked livepatch module, compiling only
the objects the patch touches (no kernel build).

Rooms, in the order data flows through them:

* :mod:`.patch` — unified diffs, applied in memory with ``#line`` directives;
* :mod:`.source` — the release's pinned, prepared source tree; one object compiled
  with the kernel's exact flags (pristine in the tree, patched in a scratch copy);
* :mod:`.objview` / :mod:`.objdiff` — the object diff (pure: two ELF files in, the
  changed functions and the refusals out);
* :mod:`.resolve` — which kernel object a file is in, and each symbol's sympos;
* :mod:`.extract` — the livepatch object of one file;
* :mod:`.module` — generated ``klp_patch`` scaffolding, linked by kbuild;
* :mod:`.pipeline` — the stages strung together, then ``convert`` and ``check``;
* :mod:`.verify` — the result loaded in qemu.
"""
