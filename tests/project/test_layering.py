"""The package's layering: no module of ``ipcclient`` imports a module of a higher layer.

The layers, from the bottom (each module's docstring says what it owns; the table below says
where it sits). A module may import its own layer and the layers below it. Imports inside
``if TYPE_CHECKING:`` are for annotations only and are not counted. Every module must be in
the table, so a new module is placed deliberately.
"""

from __future__ import annotations

import ast
import pathlib

import ipcclient

ROOT = pathlib.Path(ipcclient.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # The bottom: errors, encodings, contexts and the wire's framing (no sockets, no keys).
    (
        "core",
        (
            "compiled",
            "errors",
            "codec",
            "context",
            "retry",
            "vtrace",
            "headers",
            "wire",
            "wire.frames",
            "wire.messages",
            "wire.errorpayload",
            "wire.events",
            "wire.muxstate",
            "wire.mux",
        ),
    ),
    # Identities and names: keys, blessings, caveats, discharges; names and endpoints.
    ("security/naming", ("security", "security.*", "naming", "naming.*", "env")),
    # The encrypted VC: its handshake and records.
    ("vc", ("vc", "vc.*")),
    # Connections, flows and the streams over them; the options that configure them.
    ("transport", ("transport", "transport.*", "stream", "options")),
    # A call's client half, and the server.
    ("call/server", ("call", "server", "server.*")),
    # The client, inside in its own order (see ipcclient/client/__init__.py).
    ("client: plan", ("client.plan",)),
    ("client: parts", ("client.request", "client.security", "client.retries", "client.vcs")),
    ("client: resolution", ("client.resolution",)),
    ("client: paths", ("client.fast", "client.api")),
    ("client", ("client",)),
    # What is built on the client and the server: the command line, the demo, the interop
    # service, and the package's own top level.
    ("applications", ("cli", "cli.*", "__main__", "demo", "interop", "")),
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (specificity, layer)
    for i, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                base = pattern[:-2]
                if module.startswith(base + "."):
                    cand = (len(base), i)
                else:
                    continue
            elif module == pattern:
                cand = (len(pattern) + 1000, i)
            else:
                continue
            if best is None or cand > best:
                best = cand
    assert best is not None, f"ipcclient.{module} is in no layer: add it to LAYERS"
    return best[1]


def _known(module: str) -> bool:
    path = ROOT.joinpath(*module.split(".")) if module else ROOT
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _runtime_imports(tree: ast.Module) -> set[str]:
    """The ``ipcclient`` modules a module imports at run time (relative to the package)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ipcclient" or node.module.startswith("ipcclient."):
                base = node.module[len("ipcclient.") :] if node.module != "ipcclient" else ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    found.add(sub if _known(sub) else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ipcclient."):
                    found.add(alias.name[len("ipcclient.") :])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_module_imports_a_higher_layer() -> None:
    climbs: list[str] = []
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 40  # (the walk found the package)
    for path in modules:
        module = _module_name(path)
        layer = _layer_of(module)
        for dep in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if dep != module and _layer_of(dep) > layer:
                climbs.append(
                    f"ipcclient.{module} ({LAYERS[layer][0]}) imports ipcclient.{dep} "
                    f"({LAYERS[_layer_of(dep)][0]})"
                )
    assert not climbs, "\n".join(climbs)


def test_the_layering_check_sees_a_climb() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from ipcclient import errors\n"
        "from ipcclient.client import api\n"
        "if TYPE_CHECKING:\n"
        "    from ipcclient.cli import main\n"
        "def f():\n"
        "    import ipcclient.server.server\n"
    )
    assert _runtime_imports(tree) == {"errors", "client.api", "server.server"}
    assert _layer_of("client.api") > _layer_of("server.server") > _layer_of("errors")
    assert _layer_of("transport.conn") > _layer_of("vc.handshake") > _layer_of("wire.mux")
