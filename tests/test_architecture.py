"""The layering of docs/architecture.md, checked on the source: no import cycle, no import
that points up or around the mail-storage API, no private name imported across modules.

The walk reads every module's imports with ``ast`` (function-level imports included;
imports under ``if TYPE_CHECKING:`` count for the layer rules, not for cycles).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Import package -> folder, as pyproject.toml's package-dir maps them.
ROOTS = {
    "cloudcote": REPO / "src" / "cloudcote",
    "cloudcote.core": REPO / "core",
    "cloudcote.libfs": REPO / "libfs",
    "cloudcote.backends": REPO / "backends",
    "cloudcote.protocols": REPO / "protocols",
}

#: What protocols may import of core/mail: the API, its errors and value types, and pure
#: helpers (MIME, search keys, sort/thread, prefetch) that hold no storage.
PROTOCOL_MAIL_ALLOWED = {
    "cloudcote.core.mail", "cloudcote.core.mail.api", "cloudcote.core.mail.errors",
    "cloudcote.core.mail.values", "cloudcote.core.mail.mime", "cloudcote.core.mail.search",
    "cloudcote.core.mail.sort", "cloudcote.core.mail.prefetch",
}
#: What code above libfs may import of it: the API (the package re-exports it).
LIBFS_API = {"cloudcote.libfs", "cloudcote.libfs.api"}
#: The application modules (CLI, config, server, workers) sit above every layer.
APP = {"cloudcote.cli", "cloudcote.config", "cloudcote.server", "cloudcote.workers",
       "cloudcote.__main__"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    names: tuple[str, ...]
    type_only: bool
    line: int


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts]) if parts else pkg
            if pkg == "cloudcote" and parts and parts[0] in ("core", "libfs", "backends",
                                                             "protocols"):
                continue
            found[name] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def edges(mods: dict[str, Path]) -> Iterator[Edge]:
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        type_only = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("cloudcote"):
                        yield Edge(name, _owner(alias.name, mods), (), node.lineno in type_only,
                                   node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("cloudcote"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:  # ``from pkg import module``
                        yield Edge(name, sub, (), node.lineno in type_only, node.lineno)
                    else:
                        yield Edge(name, _owner(target, mods), (alias.name,),
                                   node.lineno in type_only, node.lineno)


def _owner(target: str, mods: dict[str, Path]) -> str:
    while target not in mods and "." in target:
        target = target.rpartition(".")[0]
    return target


def _layer(mod: str) -> str:
    if mod in APP or mod == "cloudcote":
        return "app"
    return mod.split(".")[1]


def violations() -> list[str]:
    mods = modules()
    out: list[str] = []
    for e in edges(mods):
        where = f"{e.src}:{e.line} imports {e.dst}" + (f" ({', '.join(e.names)})"
                                                      if e.names else "")
        src, dst = _layer(e.src), _layer(e.dst)
        if src == dst == "core" and e.src.startswith("cloudcote.core.auth") \
                and e.dst.startswith("cloudcote.core.mail"):
            out.append(f"{where}: auth does not depend on mail storage")
        if src in ("core", "libfs", "backends", "protocols") and dst == "app":
            out.append(f"{where}: a layer imports the application")
        if src == "protocols":
            if dst == "backends":
                out.append(f"{where}: protocols never import a storage backend")
            if dst == "libfs" and e.dst not in LIBFS_API:
                out.append(f"{where}: protocols see only the libfs API")
            if e.dst.startswith("cloudcote.core.mail") and e.dst not in PROTOCOL_MAIL_ALLOWED:
                out.append(f"{where}: protocols see only core/mail/api.py and its values")
            if e.src.startswith("cloudcote.protocols.") and e.src.count(".") == 2 \
                    and e.dst.count(".") >= 3 and e.dst.startswith("cloudcote.protocols."):
                out.append(f"{where}: a shared protocol module imports a protocol's package")
        if src == "core" and dst == "protocols":
            out.append(f"{where}: core never imports protocols")
        if src == "libfs" and dst in ("core", "protocols"):
            out.append(f"{where}: libfs knows nothing of mail")
        if src == "backends" and dst in ("core", "protocols"):
            out.append(f"{where}: backends know nothing of mail")
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if private:
            out.append(f"{where}: a private name used outside its module")
    return sorted(set(out))


def cycles() -> list[list[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges(mods):
        if not e.type_only and e.dst in graph and e.dst != e.src:
            graph[e.src].add(e.dst)
    # Tarjan's strongly connected components: each one with more than a module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_modules_are_found() -> None:
    mods = modules()
    assert "cloudcote.core.mail.api" in mods
    assert "cloudcote.protocols.imap.parser" in mods
    assert "cloudcote.cli" in mods


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_layers() -> None:
    assert violations() == []
