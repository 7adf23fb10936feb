"""The module graph of scae (no import cycle, counting imports inside functions), its lazy loading, its size."""

import ast
from pathlib import Path

import pytest

import scae

PACKAGE = Path(scae.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """scae modules that ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            if base not in modules:
                continue
            for alias in node.names:  # `from . import data` names a module, `from .x import f` names x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert {"scae._model", "scae._save", "scae._transform", "scae.tl"} <= set(graph)
    assert "scae._save" in graph["scae._model"]  # the graph sees the imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


#: The project's size rules: no module over 400 lines, no function over 80 (``def`` to the end, docstring included).
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _too_long(paths) -> list[str]:
    found = []
    for path in paths:
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.name}: {node.name} {length} lines")
    return found


def test_modules_and_functions_are_short():
    assert _too_long(sorted(PACKAGE.rglob("*.py"))) == []


def test_size_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n")
    assert _too_long([tmp_path / "long.py"]) == [f"long.py: f {MAX_FUNCTION_LINES + 1} lines"]


def test_public_modules_list_their_api():
    """``__all__`` of each public module names exactly its public functions (what autosummary and ``*`` see)."""
    import inspect

    for name in ("tl", "pl", "pp", "io", "datasets", "metrics", "genesets"):
        module = getattr(scae, name)
        public = {
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__.startswith("scae")
        }
        assert set(module.__all__) >= public, (name, sorted(public - set(module.__all__)))
        assert all(hasattr(module, n) for n in module.__all__), name


def test_heavy_libraries_load_on_first_use():
    """``import scae`` loads neither torch nor scanpy (``scae --help`` answers at once); a fit loads torch but not
    scanpy, matplotlib or scikit-learn (a pipeline's ``scae fit`` saved ~1.4 s of imports); ``scae.pl`` loads
    scanpy and matplotlib, not torch. Each step runs in a fresh interpreter."""
    import subprocess
    import sys

    heavy = ("torch", "scanpy", "matplotlib", "sklearn")
    steps = {
        "import scae": set(),
        "import numpy as np, anndata as ad, scae; scae.tl.fit(ad.AnnData(np.random.default_rng(0).normal("
        "size=(60, 4)).astype('float32')), max_epochs=1, progress=False)": {"torch"},
        "import scae; scae.pl": {"scanpy", "matplotlib", "sklearn"},  # (scanpy imports scikit-learn)
    }
    for code, expected in steps.items():
        probe = f"import sys; {code}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert set(filter(None, out.strip().split(","))) == expected, (code, out)


def test_cpu_fit_does_not_load_dynamo():
    """A CPU fit leaves ``torch._dynamo`` unloaded (1.3-1.8 s on two cores at a process's first fit: a
    ``torch.optim.Optimizer`` loads it, :class:`scae._fast.FlatAdam` does not), unless ``import torch`` loads it."""
    import subprocess
    import sys

    probe = (
        "import sys, torch, numpy as np, anndata as ad, scae; before = 'torch._dynamo' in sys.modules; "
        "scae.tl.fit(ad.AnnData(np.random.default_rng(0).normal(size=(60, 4)).astype('float32')), max_epochs=1, "
        "progress=False, device='cpu'); print(before, 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == out[0], out


def test_package_attributes_resolve_lazily():
    assert dir(scae) == sorted(scae.__all__)
    for name in scae.__all__:
        assert getattr(scae, name) is not None, name
    assert scae.SAUCIE.__module__ == "scae._model"
    assert scae.cluster.merge_clusters  # any submodule, public or not, loads on attribute access
    with pytest.raises(AttributeError, match="module 'scae' has no attribute 'nope'"):
        scae.nope  # noqa: B018
    assert not hasattr(scae, "tl.fit") and not hasattr(scae, "_repr_html_")  # (probes of IPython and others)
