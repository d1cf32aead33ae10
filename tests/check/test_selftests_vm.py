"""The kernel's livepatch selftest scripts (tools/testing/selftests/livepatch of the
release's source: test-livepatch.sh, test-callbacks.sh, test-shadow-vars.sh,
test-state.sh) run under ``klpkit vm`` in the real Debian 6.1 kernel, each test's kernel
log matched line for line with the ``check_result`` text of the script.

Nothing of the scripts is copied here: each test's steps and its expected text are parsed
from the script file at test time (:func:`parse_selftests`), with the script's variables
expanded as bash would, and translated into guest steps that do what functions.sh does
(:func:`translate`).  The guest's kernel log since the test started is filtered the way
functions.sh's check_result filters it (:func:`check_result_filter`) and compared exactly.

check's predictions ride along: every livepatch a test loads without module parameters
is judged by ``check --loaded`` against the livepatches the test has loaded before it (the
incompatible one of test-state.sh is refused, as check predicts, with the kernel line
check names), and two more scenarios capture the guest's /sys/kernel/livepatch (and
/proc/modules) into a copy that ``check --loaded-from-sysfs COPY`` reads on the host: a
state-incompatible and a cumulative livepatch against a running set, and a livepatch
refused with -EBUSY while another one's transition is stalled.
"""

from __future__ import annotations

import base64
import gzip
import io
import re
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from klpkit.check import check_module, first_error
from klpkit.check.loaded_rules import read_sysfs
from klpkit.vm import Step, VmSpec
from klpkit.vm.loader import GUEST_PATH, guest_loader
from tests.conftest import require
from tests.e2e.conftest import boot, vm_ready  # noqa: F401 - fixtures
from tests.e2e.test_scenarios import RELEASE, Boot, Script, _show, assert_ran

SELFTESTS = "tools/testing/selftests/livepatch"
#: the scripts run, every test of each (test-ftrace.sh and test-sysfs.sh are not)
SCRIPTS = ("test-livepatch.sh", "test-callbacks.sh", "test-shadow-vars.sh", "test-state.sh")
GROUP = pytest.mark.xdist_group("vm-selftests")

# ------------------------------------------------------------------ the scripts, parsed
_VAR = re.compile(r"\$(?:\{(\w+)\}|([A-Za-z_]\w*))")
_ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)$")
_FAIL_IF = re.compile(
    r'^if \[\[ "\$\((?P<cmd>[^)]*)\)" (?P<op>!=|==) "(?P<text>[^"]*)" \]\] ; then$'
)
_LOOP_UNTIL = re.compile(r"^loop_until (?P<cmd>'.*') \|\|$")
#: functions.sh's helpers a test calls, and how many arguments each takes (min, max)
CALLS = {
    "load_mod": (1, None),
    "load_lp": (1, None),
    "load_lp_nowait": (1, None),
    "load_failing_mod": (1, None),
    "unload_mod": (1, 1),
    "unload_lp": (1, 1),
    "disable_lp": (1, 1),
    "set_pre_patch_ret": (2, 2),
}


@dataclass
class Action:
    """One statement of a test: a functions.sh call (``kind`` is its name, ``args`` its
    words), ``kmsg`` (a command whose output goes to /dev/kmsg), ``loop_until`` (a command
    retried until it succeeds) or ``fail_if`` (the script fails when ``$(cmd) op text``)."""

    kind: str
    args: tuple[str, ...]


@dataclass
class SelfTest:
    script: str
    name: str
    actions: list[Action] = field(default_factory=list)
    expected: list[str] | None = None  # check_result's text, line by line

    @property
    def key(self) -> str:
        return f"{self.script}: {self.name}"


def _expand(text: str, env: dict[str, str], where: str) -> str:
    """$NAME and ${NAME} as bash expands them in double quotes (and in loop_until's
    eval): only the script's own variables occur in the tests run."""

    def one(m: re.Match) -> str:
        name = m[1] or m[2]
        if name not in env:
            raise ValueError(f"{where}: unknown variable ${name}")
        return env[name]

    return _VAR.sub(one, text)


def _statements(lines: list[str]):
    """The script's statements: one line, a multi-line ``check_result "..."``, an
    ``if ... fi`` block, or a ``... ||`` line joined with the next."""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith('check_result "'):
            body = [line[len('check_result "') :]]
            while not (body[-1].endswith('"') and not body[-1].endswith('\\"')):
                body.append(lines[i])
                i += 1
            yield "check_result", "\n".join(body)[:-1]
        elif line.startswith("if "):
            block = [line]
            while block[-1].strip() != "fi":
                block.append(lines[i].strip())
                i += 1
            yield "if", block
        elif line.endswith("||"):
            yield "line", line + " " + lines[i].strip()
            i += 1
        else:
            yield "line", line


def _action(kind: str, item, env: dict[str, str], where: str) -> Action:
    if kind == "if":
        m = _FAIL_IF.match(item[0])
        if not m or not any(s.startswith("die ") for s in item):
            raise ValueError(f"{where}: unsupported if block {item[0]!r}")
        return Action(
            "fail_if", (_expand(m["cmd"], env, where), m["op"], _expand(m["text"], env, where))
        )
    if item.endswith(" > /dev/kmsg"):
        return Action("kmsg", (_expand(item[: -len(" > /dev/kmsg")], env, where),))
    if item.startswith("loop_until "):
        m = _LOOP_UNTIL.match(item.split(" || ")[0] + " ||")
        if not m:
            raise ValueError(f"{where}: unsupported loop_until {item!r}")
        # bash joins the quoted pieces into one word; loop_until eval's it later
        return Action("loop_until", (_expand(" ".join(shlex.split(m["cmd"])), env, where),))
    words = shlex.split(_expand(item, env, where))
    if words[0] not in CALLS:
        raise ValueError(f"{where}: unsupported statement {item!r}")
    lo, hi = CALLS[words[0]]
    if len(words) - 1 < lo or (hi is not None and len(words) - 1 > hi):
        raise ValueError(f"{where}: {words[0]} with {len(words) - 1} argument(s)")
    return Action(words[0], tuple(words[1:]))


def parse_selftests(script: str, text: str) -> list[SelfTest]:
    """Every ``start_test`` ... ``check_result`` of a selftest script, in order."""
    env: dict[str, str] = {}
    tests: list[SelfTest] = []
    for kind, item in _statements(text.splitlines()):
        where = f"{script}: {tests[-1].name if tests else 'preamble'}"
        if kind == "line" and item.startswith("start_test "):
            tests.append(SelfTest(script, shlex.split(item)[1]))
        elif kind == "line" and (m := _ASSIGN.match(item)) and not tests:
            env[m[1]] = m[2]
        elif not tests:
            if item not in ("setup_config",) and not item.startswith(". "):
                raise ValueError(f"{where}: unsupported statement {item!r}")
        elif kind == "check_result":
            if "\\" in item or "`" in item:  # bash's other double-quote expansions
                raise ValueError(f"{where}: unsupported check_result text")
            tests[-1].expected = _expand(item, env, where).split("\n")
        elif kind == "line" and item == "exit 0":
            break
        else:
            tests[-1].actions.append(_action(kind, item, env, where))
    for t in tests:
        if t.expected is None:
            raise ValueError(f"{script}: {t.name}: no check_result")
    return tests


def functions_sh_facts(text: str) -> tuple[list[str], tuple[list[str], str, str]]:
    """What the tests read from functions.sh itself: the dynamic-debug control lines
    set_dynamic_debug() writes (the livepatch core's transition lines are pr_debug()),
    and check_result's filter (its grep -e patterns, grep -v pattern and sed script)."""
    m = re.search(r"cat <<-EOF > (\S+)\n(.*?)\n\s*EOF", text, re.S)
    assert m and m[1] == "/sys/kernel/debug/dynamic_debug/control", "set_dynamic_debug changed"
    control = [ln.strip() for ln in m[2].splitlines() if ln.strip()]
    body = text[text.index("function check_result") :]
    body = body[: body.index("\n}\n")]
    keep = re.findall(r"-e '([^']*)'", body)
    drop = re.search(r"grep -v '([^']*)'", body)
    sed = re.search(r"sed '([^']*)'", body)
    assert keep and drop and sed, "check_result's filter changed"
    return control, (keep, drop[1], sed[1])


def check_result_filter(lines: list[str], facts: tuple[list[str], str, str]) -> list[str]:
    """functions.sh's check_result pipeline on the new kernel log lines: keep lines
    with any ``grep -e`` pattern, drop the ``grep -v`` ones, ``sed`` off the timestamp.
    The patterns are basic regular expressions: fixed strings, and ``\\(a\\|b\\)``
    alternation, translated here; the sed script is s/^\\[[ 0-9.]*\\] //."""
    keep, drop, sed = facts
    drop_re = re.compile(drop.replace(r"\(", "(").replace(r"\)", ")").replace(r"\|", "|"))
    assert sed == r"s/^\[[ 0-9.]*\] //", sed
    stamp = re.compile(r"^\[[ 0-9.]*\] ")
    out = []
    for ln in lines:
        if any(k in ln for k in keep) and not drop_re.search(ln):
            out.append(stamp.sub("", ln, count=1))
    return out


# ------------------------------------------------------------------ the guest's side
#: functions.sh's helpers the steps need, in busybox sh (its loop_until: MAX_RETRIES=600
#: tries RETRY_INTERVAL=.1 s apart)
GUEST_LIB = "/klp/selftest.sh"
GUEST_LIB_SH = r"""# functions.sh's log() and loop_until(), for busybox sh
st_log() { echo "$1" > /dev/kmsg; }
st_until() {
    st_i=0
    until eval "$1"; do
        [ $st_i -ge 600 ] && return 1
        st_i=$((st_i + 1)); usleep 100000
    done
}
"""
SAVED = "/tmp/st-saved-dmesg"


def _sh(*parts: str) -> str:
    return f". {GUEST_LIB} && " + " && ".join(parts)


def _log(text: str) -> str:
    return f"st_log {shlex.quote(text)}"


def _until(cond: str) -> str:
    return f"st_until {shlex.quote(cond)}"


def _modprobe_line(mod: str, params: tuple[str, ...]) -> str:
    """functions.sh logs "% modprobe MOD PARAMS" with one trailing space cut."""
    msg = f"% modprobe {mod} {' '.join(params)}"
    return msg[:-1] if msg.endswith(" ") else msg


class Plan:
    """The steps of the selected tests, and which steps each test's checks read."""

    def __init__(self, mods: dict[str, Path]):
        self.mods = mods
        self.script = Script()
        self.n = 0
        self.tests: dict[str, dict] = {}  # key -> {"test", "check", "fail_if", "loads"}
        self._open: tuple[int, list[str]] | None = None  # the last step, if shell() made it

    def label(self, key: str, what: str) -> str:
        self.n += 1
        return f"{key}#{self.n}.{what}"

    def run(self, key: str, what: str, command: str, expect: str = "ok") -> str:
        label = self.label(key, what)
        self.script.add(label, "run", command, expect=expect)
        return label

    def shell(self, key: str, what: str, *parts: str) -> None:
        """Shell commands no check reads on its own: joined (``&&``) to the step before
        when shell() made that one too -- one guest step instead of several (each step
        costs a report of its dmesg and /proc/modules)."""
        steps = self.script.steps
        if self._open is not None and self._open[0] == len(steps) - 1:
            self._open[1].extend(parts)
            steps[-1] = Step("run", _sh(*self._open[1]))
            return
        self.run(key, what, _sh(*parts))
        self._open = (len(steps) - 1, list(parts))


def translate(plan: Plan, test: SelfTest) -> None:
    """Guest steps doing what the script's statements do (functions.sh).

    The scripts load modules with modprobe from /lib/modules; the guest has no modprobe
    and loads the module files it is given with insmod (klpkit vm's loader: one
    finit_module() per load).  The "% modprobe MOD PARAMS" line functions.sh writes to
    /dev/kmsg before each load is written the same, and for a load that must fail the
    line modprobe prints ("modprobe: ERROR: could not insert 'MOD': REASON", REASON the
    errno's strerror() text as kmod prints it for EINVAL and ENODEV) is logged as
    load_failing_mod() logs modprobe's: so the kernel log is the one the script expects.
    """
    key = test.key
    rec: dict = {"test": test, "fail_if": [], "loads": []}
    plan.tests[key] = rec
    plan.shell(
        key, "start_test", f"dmesg | wc -l > {SAVED}", _log(f"===== TEST: {test.name} =====")
    )
    for a in test.actions:
        _translate_action(plan, key, rec, a)
    rec["check"] = plan.run(key, "check_result", f"dmesg | tail -n +$(($(cat {SAVED}) + 1))")


def _translate_action(plan: Plan, key: str, rec: dict, a: Action) -> None:
    s, mod = plan.script, a.args[0] if a.args else ""
    match a.kind:
        case "load_mod" | "load_lp" | "load_lp_nowait":
            plan.shell(key, "log", _log(_modprobe_line(mod, a.args[1:])))
            label = plan.label(key, a.kind)
            s.add(label, "insmod", plan.mods[mod], *a.args[1:])
            rec["loads"].append((label, a))
            plan.shell(key, "wait-sysfs", _until(f"[ -e /sys/module/{mod} ]"))
            if a.kind != "load_mod":
                plan.shell(key, "wait-sysfs", _until(f"[ -e /sys/kernel/livepatch/{mod} ]"))
            if a.kind == "load_lp":
                s.add(plan.label(key, "wait-transition"), "wait-transition", mod)
        case "load_failing_mod":
            guest = f"/lib/modules/{plan.mods[mod].name}"
            cmd = " ".join(map(shlex.quote, [GUEST_PATH, guest, *a.args[1:]]))
            label = plan.run(
                key,
                a.kind,
                _sh(
                    _log(_modprobe_line(mod, a.args[1:])),
                    f'if out=$({cmd} 2>&1); then echo "{mod} unexpectedly loaded"; exit 1; fi',
                    'echo "$out"',
                    f"st_log \"modprobe: ERROR: could not insert '{mod}': ${{out##*: }}\"",
                ),
            )
            rec["loads"].append((label, a))
        case "unload_mod" | "unload_lp":
            plan.shell(
                key,
                "refcnt",
                _until(f'[ "$(cat /sys/module/{mod}/refcnt)" = 0 ]'),
                _log(f"% rmmod {mod}"),
            )
            s.add(plan.label(key, "rmmod"), "rmmod", mod)
            plan.shell(key, "wait-sysfs", _until(f"[ ! -e /sys/module/{mod} ]"))
        case "disable_lp":
            plan.shell(key, "log", _log(f"% echo 0 > /sys/kernel/livepatch/{mod}/enabled"))
            s.add(plan.label(key, "disable"), "disable", mod)
        case "set_pre_patch_ret":
            ret, path = a.args[1], f"/sys/module/{mod}/parameters/pre_patch_ret"
            plan.shell(
                key,
                a.kind,
                _log(f"% echo {ret} > {path}"),
                f"echo {shlex.quote(ret)} > {path}",
                _until(f'[ "$(cat {path})" = {shlex.quote(ret)} ]'),
            )
        case "kmsg":
            plan.run(key, "kmsg", f"{a.args[0]} > /dev/kmsg", expect="any")
        case "loop_until":
            plan.shell(key, "loop_until", _until(a.args[0]))
        case "fail_if":
            rec["fail_if"].append((plan.run(key, "fail_if", a.args[0], expect="any"), a))
        case _:
            raise AssertionError(a.kind)


CAPTURE = (
    "cd / && rm -rf /tmp/cap && mkdir -p /tmp/cap/proc && "
    "find sys/kernel/livepatch | while read -r p; do "
    'if [ -d "$p" ]; then mkdir -p "/tmp/cap/$p"; '
    'elif ! cat "$p" > "/tmp/cap/$p" 2>/dev/null; then rm -f "/tmp/cap/$p"; fi; done; '
    "cat /proc/modules > /tmp/cap/proc/modules && tar -C /tmp/cap -c . | gzip | base64"
)


def _sysfs_scenarios(plan: Plan) -> None:
    """Not from the scripts: the guest's /sys/kernel/livepatch (and /proc/modules)
    copied (the write-only ``force`` attribute left out) while a set of livepatches is
    loaded, then what the kernel does with the next livepatch."""
    s, m = plan.script, plan.mods
    # a stalled transition: test-callbacks.sh's busy target holds it
    s.add("busy.target", "insmod", m["test_klp_callbacks_busy"], "block_transition=Y")
    s.add("busy.lp", "insmod", m["test_klp_callbacks_demo"])
    s.add(
        "busy.stalled",
        "run",
        _sh(_until("grep -q '^1$' /sys/kernel/livepatch/test_klp_callbacks_demo/transition")),
    )
    s.add("busy.capture", "run", CAPTURE)
    s.add("busy.refused", "insmod", m["test_klp_livepatch"], expect="fail")
    s.add("busy.disable", "disable", "test_klp_callbacks_demo")
    s.add("busy.rmmod", "rmmod", "test_klp_callbacks_demo")
    s.add("busy.rmmod-target", "rmmod", "test_klp_callbacks_busy")
    # states: test_klp_state2 (cumulative, a state) and test_klp_livepatch stacked on it
    s.add("set.state2", "insmod", m["test_klp_state2"])
    s.add("set.state2.wait", "wait-transition", "test_klp_state2")
    s.add("set.lp", "insmod", m["test_klp_livepatch"])
    s.add("set.lp.wait", "wait-transition", "test_klp_livepatch")
    s.add("set.capture", "run", CAPTURE)
    s.add("set.refused", "insmod", m["test_klp_state"], expect="fail")
    s.add("set.state3", "insmod", m["test_klp_state3"])
    s.add("set.state3.wait", "wait-transition", "test_klp_state3")
    s.add("set.list", "run", "ls /sys/kernel/livepatch")


# ------------------------------------------------------------------ the boot
@pytest.fixture(scope="session")
def selftests_dir(source_tree) -> Path:
    d = source_tree.root / SELFTESTS
    require(d.is_dir(), f"{d}: the livepatch selftests of the linux-source package")
    return d


@pytest.fixture(scope="session")
def selftests(selftests_dir) -> list[SelfTest]:
    return [
        t for name in SCRIPTS for t in parse_selftests(name, (selftests_dir / name).read_text())
    ]


@pytest.fixture(scope="session")
def filter_facts(selftests_dir):
    return functions_sh_facts((selftests_dir / "functions.sh").read_text())


@pytest.fixture(scope="session")
def boot_selftests(boot, samples, selftests, filter_facts):  # noqa: F811
    require(guest_loader() is not None, "gcc -static for klpkit vm's guest loader")
    mods, _db = samples
    plan = Plan(mods)
    control, _filter = filter_facts
    # setup_config: set_dynamic_debug, set_ftrace_enabled 1 (push/pop_config: a fresh boot)
    plan.script.add(
        "setup",
        "run",
        _sh(
            "mount -t debugfs none /sys/kernel/debug",
            f"printf '%s\\n' {' '.join(map(shlex.quote, control))} "
            "> /sys/kernel/debug/dynamic_debug/control",
            "echo 1 > /proc/sys/kernel/ftrace_enabled",
            'st_log "livepatch: kernel.ftrace_enabled = $(cat /proc/sys/kernel/ftrace_enabled)"',
        ),
    )
    for t in selftests:
        translate(plan, t)
    _sysfs_scenarios(plan)
    spec = VmSpec(
        release=RELEASE,
        steps=plan.script.steps,
        keep_going=True,
        files={GUEST_LIB: GUEST_LIB_SH.encode()},
        modules=sorted(set(mods.values())),
    )
    return plan, Boot(plan.script, boot("kernel livepatch selftests", spec))


# ------------------------------------------------------------------ the tests
SLOW = pytest.mark.slow


def _test_ids():
    """(script, test name) of every test the scripts hold, read at collection time when
    the source tree is already prepared (else one placeholder the fixtures skip or fail)."""
    from klpkit import debian

    d = debian.cache_root() / RELEASE / "source" / "linux-source-6.1" / SELFTESTS
    try:
        return [
            pytest.param(t.key, id=t.key)
            for name in SCRIPTS
            for t in parse_selftests(name, (d / name).read_text())
        ]
    except OSError:
        return [pytest.param(None, id="scripts-not-prepared")]


@SLOW
def test_scripts_parse(selftests):
    """Every test of the four scripts is understood (no statement skipped), and the
    subset the issue names is there."""
    keys = {t.key for t in selftests}
    assert {
        "test-livepatch.sh: basic function patching",
        "test-livepatch.sh: atomic replace livepatch",
        "test-callbacks.sh: target module before livepatch",
        "test-shadow-vars.sh: basic shadow variable API",
        "test-state.sh: incompatible cumulative livepatches",
    } <= keys
    assert all(t.actions and t.expected for t in selftests)


@pytest.mark.parametrize("key", _test_ids())
@SLOW
@pytest.mark.vm
@GROUP
def test_selftest_log_line_for_line(key, boot_selftests, filter_facts, selftests):
    plan, b = boot_selftests
    if key is None:  # the ids could not be read at collection: run every test here
        keys = [t.key for t in selftests]
    else:
        keys = [key]
    for k in keys:
        _assert_selftest(plan, b, k, filter_facts)


def _assert_selftest(plan: Plan, b: Boot, key: str, filter_facts) -> None:
    assert b["setup"].passed, _show(b["setup"])  # setup_config: dynamic debug on
    rec = plan.tests[key]
    test: SelfTest = rec["test"]
    steps = [b[lbl] for lbl in plan.script.index if lbl.startswith(f"{key}#")]
    assert all(sr.passed for sr in steps), [_show(sr) for sr in steps if not sr.passed]
    new = b[rec["check"]].output
    # the first new line is the test's own marker: the log since start_test, whole
    assert new and new[0].endswith(f"===== TEST: {test.name} ====="), new[:3]
    got = check_result_filter(new, filter_facts[1])
    assert got == test.expected, "\n".join(
        ["expected:", *test.expected, "", "kernel log, filtered as check_result does:", *got]
    )
    for label, a in rec["fail_if"]:
        cmd, op, text = a.args
        out = "\n".join(b[label].output)
        # the script fails when the condition holds
        assert (out == text) if op == "!=" else (out != text), f"{a}: {out!r}"


@SLOW
@pytest.mark.vm
@GROUP
def test_check_loaded_predicts_every_load(boot_selftests, samples):
    """Each livepatch a test loads without parameters, judged by check --loaded against
    the livepatches the test loaded before it (disabled or removed ones leave the set;
    replaced ones check drops itself): the kernel
    did what check predicted, refusals with the line check names.  Module parameters
    (replace=, pre_patch_ret=) change at run time what check reads from the file: a test
    stops being predicted at its first one."""
    plan, b = boot_selftests
    mods, db = samples
    report = []
    for key, rec in plan.tests.items():
        for label, err in _predictions(plan, rec, mods, db):
            sr = b[label]
            if err is None:
                assert sr.passed and sr.exit_status == 0, _show(sr)
                continue
            assert sr.exit_status == 0 and sr.step.kind == "run", _show(sr)  # load_failing_mod
            assert [ln for ln in sr.dmesg if err.matches(ln)], (err.kernel_message, _show(sr))
            report.append((key, err.rule))
    assert ("test-state.sh: incompatible cumulative livepatches", "klp.state.incompatible") in (
        report
    )


def _predictions(plan: Plan, rec: dict, mods, db):
    """(label, first error check predicts or None) for the test's livepatch loads."""
    from klpkit.convert.objects import read_patched_objects
    from klpkit.elf import ElfFile

    loaded: list[str] = []
    loads = dict(rec["loads"])
    for a in rec["test"].actions:
        mod = a.args[0] if a.args else ""
        if a.kind in ("disable_lp", "unload_lp", "unload_mod") and mod in loaded:
            loaded.remove(mod)
        if a.kind not in ("load_lp", "load_lp_nowait", "load_failing_mod"):
            continue
        if not read_patched_objects(ElfFile.read(mods[mod])).registers:
            continue
        if len(a.args) > 1:
            return
        label = next(lbl for lbl, act in loads.items() if act is a)
        err = first_error(check_module(mods[mod], db, "6.1", loaded=[mods[n] for n in loaded]))
        yield label, err
        if a.kind != "load_failing_mod":
            loaded.append(mod)


def _capture(sr, dest: Path) -> Path:
    assert_ran(sr)
    data = gzip.decompress(base64.b64decode("".join(sr.output)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@SLOW
@pytest.mark.vm
@GROUP
def test_loaded_from_sysfs_states_and_replace(boot_selftests, samples, tmp_path):
    """check --loaded-from-sysfs on the guest's copy: test_klp_state is refused by
    klp_is_patch_compatible() (test_klp_state2 holds the state at a later version) with
    the line the kernel printed; test_klp_state3 (cumulative) loads and leaves itself
    alone, test_klp_livepatch's function back to its original code."""
    (_plan, b), (mods, db) = boot_selftests, samples
    running = read_sysfs(_capture(b["set.capture"], tmp_path), mods["test_klp_state"].parent)
    assert [(p.name, p.enabled, p.transition) for p in running.patches] == [
        ("test_klp_state2", True, False),
        ("test_klp_livepatch", True, False),
    ]
    assert running.patches[1].functions == {("vmlinux", "cmdline_proc_show", 1)}
    refused = b["set.refused"]
    assert_ran(refused, ok=False)
    err = first_error(check_module(mods["test_klp_state"], db, "6.1", running=running))
    assert err is not None and err.rule == "klp.state.incompatible"
    assert [ln for ln in refused.dmesg if err.matches(ln)], _show(refused)
    findings = check_module(mods["test_klp_state3"], db, "6.1", running=running)
    assert first_error(findings) is None
    assert_ran(b["set.state3"])
    [after] = [f for f in findings if f.rule == "loaded.set"]
    assert after.details["patches"] == b["set.list"].output == ["test_klp_state3"]
    [reverts] = [f for f in findings if f.rule == "klp.replace.reverts"]
    assert "test_klp_livepatch" in reverts.message and "cmdline_proc_show" in reverts.message
    # a livepatch that is not cumulative stacks on top, in the order /proc/modules tells
    stacked = check_module(mods["test_klp_atomic_replace"], db, "6.1", running=running)
    [after] = [f for f in stacked if f.rule == "loaded.set"]
    assert after.details["patches"] == [
        "test_klp_state2",
        "test_klp_livepatch",
        "test_klp_atomic_replace",
    ]


@SLOW
@pytest.mark.vm
@GROUP
def test_loaded_from_sysfs_transition_busy(boot_selftests, samples, tmp_path, capsys):
    """A transition held by a busy task (test_klp_callbacks_busy): the copy shows it, and
    check predicts the next livepatch's -EBUSY, which the kernel returned."""
    from klpkit.cli import main

    (_plan, b), (mods, db) = boot_selftests, samples
    root = _capture(b["busy.capture"], tmp_path)
    running = read_sysfs(root, mods["test_klp_livepatch"].parent)
    assert [(p.name, p.enabled, p.transition) for p in running.patches] == [
        ("test_klp_callbacks_demo", True, True)
    ]
    refused = b["busy.refused"]
    assert_ran(refused, ok=False)
    assert any("Device or resource busy" in ln for ln in refused.output), _show(refused)
    err = first_error(check_module(mods["test_klp_livepatch"], db, "6.1", running=running))
    assert err is not None and err.rule == "loaded.transition"
    # the command line says the same
    code = main(
        [
            "check",
            str(mods["test_klp_livepatch"]),
            "--symbols",
            str(db.path),
            "--loaded-from-sysfs",
            str(root),
            "--modules-dir",
            str(mods["test_klp_livepatch"].parent),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "refused: loaded.transition" in out, out


def test_parser_reads_what_bash_would_and_refuses_the_rest():
    text = """#!/bin/bash
. $(dirname $0)/functions.sh
MOD=test_klp_x
setup_config
start_test "one"
load_mod $MOD a=1
# a comment
grep 'live patched' /proc/cmdline > /dev/kmsg
loop_until 'grep -q '^1$' /sys/kernel/livepatch/$MOD/transition' ||
\tdie "stalled"
if [[ "$(cat /proc/cmdline)" == "$MOD: patched" ]] ; then
\techo -e "FAIL\\n\\n"
\tdie "livepatch kselftest(s) failed"
fi
unload_mod $MOD
check_result "% modprobe $MOD a=1
$MOD: ${MOD}_init"

exit 0
"""
    [t] = parse_selftests("x.sh", text)
    assert t.name == "one" and t.expected == [
        "% modprobe test_klp_x a=1",
        "test_klp_x: test_klp_x_init",
    ]
    assert [(a.kind, a.args) for a in t.actions] == [
        ("load_mod", ("test_klp_x", "a=1")),
        ("kmsg", ("grep 'live patched' /proc/cmdline",)),
        ("loop_until", ("grep -q ^1$ /sys/kernel/livepatch/test_klp_x/transition",)),
        ("fail_if", ("cat /proc/cmdline", "==", "test_klp_x: patched")),
        ("unload_mod", ("test_klp_x",)),
    ]
    assert _modprobe_line("m", ()) == "% modprobe m"
    for bad, why in [
        ("frobnicate $MOD", "unsupported statement"),
        ("load_lp $NOPE", "unknown variable [$]NOPE"),
        ("unload_mod a b", "unload_mod with 2 argument"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_selftests("x.sh", text.replace("unload_mod $MOD", bad))
    with pytest.raises(ValueError, match="no check_result"):
        parse_selftests("x.sh", 'start_test "t"\nload_mod m\n')


def test_check_result_filter_is_functions_sh_pipeline():
    facts = (["livepatch:", "test_klp"], r"\(tainting\|taints\) kernel", r"s/^\[[ 0-9.]*\] //")
    log = [
        "[    1.000000] ===== TEST: t =====",
        "[    1.100000] % modprobe test_klp_livepatch",
        "[    1.200000] test_klp_livepatch: tainting kernel with TAINT_LIVEPATCH",
        "[    1.300000] livepatch: enabling patch 'test_klp_livepatch'",
        "[    1.400000] sd 0:0:0:0: unrelated",
        "[   12.500000] test_klp_x: loading out-of-tree module taints kernel.",
    ]
    assert check_result_filter(log, facts) == [
        "% modprobe test_klp_livepatch",
        "livepatch: enabling patch 'test_klp_livepatch'",
    ]
