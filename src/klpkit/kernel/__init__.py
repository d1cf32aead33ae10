"""What the kernel defines: livepatch naming, modinfo, __versions, the module signature."""
