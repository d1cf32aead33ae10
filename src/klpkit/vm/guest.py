"""The guest side of the protocol: the generated ``/init`` and its helper library.

Protocol (every line the host trusts starts with ``KLPVM:``; the host finds the
marker anywhere in a console line, since kernel messages can share the line)::

    KLPVM:boot:<uptime>                  /init started
    KLPVM:<i>:begin:<uptime>             step i started
    KLPVM:<i>:rc:<status>:<uptime>       its command exited with <status>
    KLPVM:<i>:out:<text>                 one line of its stdout+stderr
    KLPVM:<i>:gz:<base64>                or, for big output (kallsyms), gzip+base64 chunks
    KLPVM:<i>:dmesg:<text>               one kernel log line that appeared during it
    KLPVM:<i>:lp:<patch>:<enabled>:<transition>   livepatch sysfs state after it
    KLPVM:<i>:mod:<line>                 /proc/modules after it
    KLPVM:<i>:end                        step i fully reported
    KLPVM:<i>:skipped                    not run: an earlier step failed
    KLPVM:dmesg:<text>                   the whole kernel log, at the end
    KLPVM:done:<uptime>                  about to power off

Output is collected in a file and prefixed with ``sed`` after the command ends,
so a step's lines are never interleaved with another step's.
"""

import shlex

from klpkit.vm.spec import Step

MARK = "KLPVM"
LIB_PATH = "/klp/lib.sh"
STUCK_STATUS = 3  # exit status of wait-transition / disable when a transition does not finish
GUEST_GRACE = 10  # the guest's `timeout` wrapper fires this long after a helper's own limit

# The helper library.  Sourced by /init, and run as `sh /klp/lib.sh FUNC ARGS...`
# for helpers that must run under busybox `timeout` (which cannot run shell functions).
LIB_SH = r"""# klpkit vm guest library (generated; see klpkit/vm/guest.py for the protocol)
KLP_GZ_MIN=65536  # bigger step output is sent gzip'ed + base64: the emulated UART does ~200 KB/s
klp_up() { read -r up _ < /proc/uptime; echo "$up"; }
klp_say() { echo "KLPVM:$*"; }

# Tasks not yet switched to the goal state of a transition, with their kernel stacks:
# why a transition is stuck.
klp_stuck_tasks() {
    goal=$1; n=0
    for t in /proc/[0-9]*/task/[0-9]*; do
        st=$(cat "$t/patch_state" 2>/dev/null) || continue
        [ "$st" = -1 ] || [ "$st" = "$goal" ] && continue
        echo "task ${t##*/} $(cat "$t/comm" 2>/dev/null) patch_state=$st"
        sed 's/^/    /' "$t/stack" 2>/dev/null
        n=$((n + 1)); [ $n -ge 20 ] && break
    done
}

# klp_wait_transition TIMEOUT [PATCH]: poll until no (or PATCH's) transition is in progress.
klp_wait_transition() {
    limit=$(($1 * 20)); n=0
    while :; do
        busy=""
        for d in /sys/kernel/livepatch/${2:-*}; do
            [ "$(cat "$d/transition" 2>/dev/null)" = 1 ] && busy="$busy ${d##*/}"
        done
        if [ -z "$busy" ]; then
            [ -z "$2" ] || [ -d "/sys/kernel/livepatch/$2" ] || { echo "no livepatch $2"; return 1; }
            echo "no transition in progress"; return 0
        fi
        [ $n -ge $limit ] && break
        usleep 50000; n=$((n + 1))
    done
    echo "transition stuck:$busy"
    for p in $busy; do klp_stuck_tasks "$(cat "/sys/kernel/livepatch/$p/enabled")"; done
    return 3
}

# klp_disable TIMEOUT PATCH: disable PATCH and wait for its sysfs directory to vanish.
klp_disable() {
    d=/sys/kernel/livepatch/$2
    [ -d "$d" ] || { echo "no livepatch $2"; return 1; }
    echo 0 > "$d/enabled" || return 1
    limit=$(($1 * 20)); n=0
    while [ -d "$d" ]; do
        if [ $n -ge $limit ]; then
            echo "transition stuck: $2 still present, enabled=$(cat "$d/enabled") transition=$(cat "$d/transition")"
            klp_stuck_tasks 0
            return 3
        fi
        usleep 50000; n=$((n + 1))
    done
    echo "livepatch $2 disabled and removed from sysfs"
}

# klp_step INDEX EXPECT TIMEOUT COMMAND...: run one step and report it.
klp_step() {
    i=$1; expect=$2; tmo=$3; shift 3
    if [ "$klp_stop" = 1 ]; then klp_say "$i:skipped"; return; fi
    klp_say "$i:begin:$(klp_up)"
    n0=$(dmesg | wc -l)
    timeout -k 5 "$tmo" "$@" > /tmp/klp.out 2>&1 < /dev/null
    rc=$?
    klp_say "$i:rc:$rc:$(klp_up)"
    if [ "$(wc -c < /tmp/klp.out)" -gt $KLP_GZ_MIN ]; then
        gzip -1 -c /tmp/klp.out | base64 | sed "s/^/KLPVM:$i:gz:/"
    else
        sed "s/^/KLPVM:$i:out:/" /tmp/klp.out
    fi
    dmesg | tail -n +$((n0 + 1)) | sed "s/^/KLPVM:$i:dmesg:/"
    for d in /sys/kernel/livepatch/*; do
        [ -d "$d" ] && klp_say "$i:lp:${d##*/}:$(cat "$d/enabled"):$(cat "$d/transition")"
    done
    sed "s/^/KLPVM:$i:mod:/" /proc/modules
    klp_say "$i:end"
    case "$expect:$rc" in
        ok:0|any:*) ;;
        fail:0) [ "$klp_keep_going" = 1 ] || klp_stop=1 ;;
        fail:*) ;;
        *) [ "$klp_keep_going" = 1 ] || klp_stop=1 ;;
    esac
}

klp_finish() {
    dmesg | sed "s/^/KLPVM:dmesg:/"
    klp_say "done:$(klp_up)"
    sync
    poweroff -f
}

case "$0" in */lib.sh) "$@" ;; esac
"""


def step_command(
    step: Step, guest_args: tuple[str, ...] | None = None, insmod: str = "insmod"
) -> list[str]:
    """The guest command line for ``step`` (``guest_args`` replaces host paths for insmod;
    ``insmod`` is the loader to run, see :mod:`klpkit.vm.loader`)."""
    args = guest_args if guest_args is not None else step.args
    tmo = str(int(step.timeout))
    match step.kind:
        case "insmod":
            return [insmod, *args]
        case "rmmod":
            return ["rmmod", *args]
        case "run":
            return ["sh", "-c", args[0]]
        case "wait-transition":
            return ["sh", LIB_PATH, "klp_wait_transition", tmo, *args]
        case "disable":
            return ["sh", LIB_PATH, "klp_disable", tmo, *args]
        case "dmesg":
            return ["dmesg"]
        case "kallsyms":
            return ["cat", "/proc/kallsyms"]
    raise AssertionError(step.kind)


def guest_timeout(step: Step) -> int:
    """The guest-side ``timeout`` for a step: helpers with their own limit get a grace period."""
    base = max(1, int(step.timeout + 0.999))
    return base + GUEST_GRACE if step.kind in ("wait-transition", "disable") else base


def init_script(steps: list[Step], commands: list[list[str]], keep_going: bool = False) -> str:
    """The generated ``/init``: mount the pseudo file systems, run the steps, power off."""
    lines = [
        "#!/bin/sh",
        "# generated by klpkit vm; protocol: see klpkit/vm/guest.py",
        "export PATH=/test:/bin:/sbin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs dev /dev 2>/dev/null",
        f". {LIB_PATH}",
        f"klp_stop=0; klp_keep_going={1 if keep_going else 0}",
        'klp_say "boot:$(klp_up)"',
    ]
    for i, (step, cmd) in enumerate(zip(steps, commands, strict=True)):
        lines.append(f"# {step.describe()}")
        lines.append(
            f"klp_step {i} {step.expect} {guest_timeout(step)} " + " ".join(map(shlex.quote, cmd))
        )
    lines.append("klp_finish")
    return "\n".join(lines) + "\n"
