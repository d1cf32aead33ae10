"""Prove livepatches in a real kernel: boot it under qemu and drive steps in the guest.

Public API::

    from klpkit.vm import VmSpec, Step, run_vm
    result = run_vm(VmSpec(release="6.1.0-47-amd64",
                           steps=[Step("insmod", "lp.ko"), Step("wait-transition"),
                                  Step("run", "cat /proc/cmdline")]))
    result.ok, result.steps[2].output, result.livepatch, result.dmesg, result.boot_seconds
    result.failure  # None, or Failure(kind, message, step, lines)
    result.to_json()
"""

from klpkit.vm.result import Failure, StepResult, VmResult, parse_console
from klpkit.vm.run import VmError, modules_in, run_vm
from klpkit.vm.spec import Step, VmSpec, parse_script, parse_step

__all__ = [
    "Failure",
    "Step",
    "StepResult",
    "VmError",
    "VmResult",
    "VmSpec",
    "modules_in",
    "parse_console",
    "parse_script",
    "parse_step",
    "run_vm",
]
