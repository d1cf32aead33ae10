"""klpkit: a toolchain for Linux kernel livepatch modules."""

__version__ = "0.1.0"
