"""The dependency arrows, read from the sources (every import, module level
or inside a function): services -> library, never back and never between
services; in the library, semantics <- engine <- models and semantics <- trace,
with trace and engine never importing each other and the engine importing no model;
the native kernels (opinfer/native: the engine's products, the trace's hashing) sit
at the bottom beside semantics (docs/models.md, README "Layout")."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("node", "challenger", "coordinator")

# A service may import another only here, each with its reason.
SERVICE_EXCEPTIONS = {
    # the in-process test network (tests, benches, demos) serves nodes in the coordinator's process
    ("coordinator/local.py", "node"),
}


# Entry points inside the library package that start services, each with its reason.
LIBRARY_EXCEPTIONS = {
    "opinfer/cli.py": "the `opinfer` command dispatches to each service's own CLI",
    "opinfer/devnet.py": "the devnet supervisor starts the services (and its own liar, dishonest_node_main, "
                         "is a node.app.Node subclass)",
}


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def sources(top: str):
    for path in sorted((ROOT / top).rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), imports(path)


def offending(top: str, forbidden: tuple[str, ...], allowed=lambda f, m: False) -> list[str]:
    return sorted(f"{f} imports {m}" for f, mods in sources(top) for m in mods
                  if m.split(".")[0] != "opinfer" and m.split(".")[0] in forbidden and not allowed(f, m)
                  or m.startswith("opinfer.") and any(m == x or m.startswith(x + ".") for x in forbidden)
                  and not allowed(f, m))


def test_the_library_never_imports_a_service():
    assert offending("opinfer", SERVICES, lambda f, m: f in LIBRARY_EXCEPTIONS) == []


@pytest.mark.parametrize("service", SERVICES)
def test_services_import_the_library_not_each_other(service):
    others = tuple(s for s in SERVICES if s != service)
    assert offending(service, others, lambda f, m: (f, m.split(".")[0]) in SERVICE_EXCEPTIONS) == []


def test_semantics_is_the_bottom_layer():
    """Integer semantics and the op program (the contracts' twin) import no other part of opinfer."""
    assert offending("opinfer/semantics", ("opinfer.engine", "opinfer.trace", "opinfer.models", "opinfer.chain",
                                           "opinfer.sdk")) == []


def test_the_native_kernels_are_a_bottom_layer():
    """The C kernels' loader serves the engine and the trace alike, so it imports neither."""
    assert offending("opinfer/native", ("opinfer.engine", "opinfer.trace", "opinfer.models", "opinfer.chain",
                                        "opinfer.sdk", "opinfer.semantics")) == []
    assert any(m.startswith("opinfer.native") for _, ms in sources("opinfer/trace") for m in ms)


def test_trace_never_imports_the_engine():
    assert offending("opinfer/trace", ("opinfer.engine", "opinfer.models", "opinfer.chain", "opinfer.sdk")) == []


def test_the_engine_never_imports_the_trace_or_a_model():
    """The fast kernels and the sampler know no model: each model's folder builds on them."""
    assert offending("opinfer/engine", ("opinfer.trace", "opinfer.models", "opinfer.chain", "opinfer.sdk")) == []


def test_a_model_folder_imports_no_other_model():
    for folder in sorted(p for p in (ROOT / "opinfer" / "models").iterdir() if (p / "spec.py").exists()):
        others = tuple(f"opinfer.models.{o.name}" for o in (ROOT / "opinfer" / "models").iterdir()
                       if (o / "spec.py").exists() and o != folder)
        assert offending(f"opinfer/models/{folder.name}", others) == []


def test_the_scanner_sees_lazy_imports(tmp_path):
    f = ROOT / "opinfer" / "trace" / "player.py"
    assert "opinfer.semantics.program" in imports(ROOT / "opinfer" / "trace" / "state.py")
    assert any(m.startswith("opinfer.trace") for m in imports(f))
