"""The house's one-way rule, read from the source: a room imports only rooms below it.

Rooms, lowest first (CONTRIBUTING.md): the ELF object model knows nothing of the kernel,
the kernel's rules know nothing of the symbol database, and so on up to the commands.
The shared helpers (errors, numbers, fileio, output, debian) import no room at all.
A cycle between modules of different rooms is an upward arrow, so this test also rules
cycles out; modules of one room may import each other.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "klpkit"

#: lowest first; a room may import every room before it in this list
ROOMS = [
    "elf",
    "kernel",
    "symbols",
    "convert",
    "inspect",
    "check",
    "deps",
    "vm",
    "build",
    "commands",
    "cli",
]
#: the helpers every room may use; they import only each other, in this order
SHARED = ["errors", "numbers", "fileio", "output", "debian"]
#: the package itself (``klpkit.__version__``)
TOP = "klpkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: annotations only, never executed."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return hidden


def _imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every klpkit module ``path`` imports, at any depth of the file (function-local
    imports are imports too: hiding one inside a function does not make a cycle go away);
    ``runtime_only`` leaves out the ``if TYPE_CHECKING:`` ones."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    hidden = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == TOP)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == TOP:
                found.add(target)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def _rank(room: str) -> tuple[int, int]:
    """(0, i) for shared helper i, (1, i) for room i: helpers sit below every room."""
    if room in SHARED:
        return (0, SHARED.index(room))
    return (1, ROOMS.index(room))


def _arrows(runtime_only: bool = False) -> list[tuple[str, str]]:
    return [
        (_module_name(path), target)
        for path in sorted(SRC.rglob("*.py"))
        for target in sorted(_imports(path, runtime_only))
    ]


def test_every_module_belongs_to_a_known_room():
    unknown = {
        _room(_module_name(p))
        for p in SRC.rglob("*.py")
        if _room(_module_name(p)) not in (*ROOMS, *SHARED, TOP)
    }
    assert not unknown, f"add these to ROOMS or SHARED (and CONTRIBUTING.md): {unknown}"


def test_no_arrow_from_a_lower_room_to_a_higher_one():
    upward = []
    for source, target in _arrows():
        a, b = _room(source), _room(target)
        if a == b or b == TOP and target == TOP:
            continue  # within a room; ``from klpkit import __version__``
        if _rank(b) > _rank(a):
            upward.append(f"{source} -> {target}")
    assert not upward, "imports against the one-way rule:\n" + "\n".join(upward)


def test_no_cycle_between_modules():
    """Also within a room: a cycle of modules is two ideas that should be one, or a
    third module both need.  A type-only back-reference (``if TYPE_CHECKING:``, a section
    naming the file that holds it) is not a cycle: nothing runs it."""
    graph: dict[str, set[str]] = {}
    known = {_module_name(p) for p in SRC.rglob("*.py")}
    for source, target in _arrows(runtime_only=True):
        # ``from klpkit.elf import X`` names the package; a submodule import names itself
        if target in known and target != source:
            graph.setdefault(source, set()).add(target)
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its submodules, which import siblings through the
    # package, is the one harmless loop Python itself resolves; anything else is a cycle
    real = [c for c in cycles if not _through_own_package(c)]
    assert not real, "import cycles:\n" + "\n".join(real)


def _through_own_package(cycle: str) -> bool:
    nodes = cycle.split(" -> ")
    packages = [n for n in nodes if (SRC.parent / n.replace(".", "/") / "__init__.py").exists()]
    return bool(packages) and all(
        n == p or n.startswith(p + ".") for n in nodes for p in packages[:1]
    )


@pytest.mark.parametrize("room", ["elf"])
def test_elf_knows_no_kernel(room):
    """The ELF model is format only: ``kernel/`` interprets it, never the reverse."""
    kernelish = [
        f"{s} -> {t}" for s, t in _arrows() if _room(s) == room and _room(t) not in (room, *SHARED)
    ]
    assert not kernelish, kernelish
