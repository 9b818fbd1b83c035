"""
The repository's layout rules, read from the source with ``ast`` (README "Layout"):

* the library and the tools apart: nothing outside ``tests/`` imports the test suite, the
  package imports nothing from ``tools/``, and no file edits ``sys.path``;
* one home for loading a config and building a model: ``LazyConfig.load`` is called only in
  ``atss/fileio.py`` (the ``.py`` configs of ``load_config_file``), ``atss/config.py``
  (Detectron2's bundled configs) and ``atss/model_zoo`` (the packaged configs); a model is
  instantiated from a config (``instantiate(<cfg>.model)``) and a checkpointer made only in
  ``atss.engine`` (``build_model``, the train loop, the weights rule);
* files are read without running code: ``torch.load``, ``pickle.load`` / ``Unpickler`` and
  ``yaml.load`` / ``unsafe_load`` appear only in ``atss/fileio.py`` and in the converter's
  ``--allow-pickle`` branch (``_unpickle_trusted``);
* the package's modules import each other without cycles (function-level imports counted).

Each rule is a function of one file's syntax tree; the first test feeds each rule a snippet
that breaks it, so a rule that stopped finding anything would fail there.
"""

import ast
import os
from typing import Callable, Dict, List, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join("projects", "ATSS", "atss")
SKIP_DIRS = {".git", ".venv", ".cache", "output", "__pycache__", ".hypothesis", ".pytest_cache"}

FILEIO = "projects/ATSS/atss/fileio.py"
CONFIG_READERS = {
    FILEIO,
    "projects/ATSS/atss/config.py",
    "projects/ATSS/atss/model_zoo/__init__.py",
}
# The converter's opt-in: (file, function) where a trusted file is fully unpickled.
TRUSTING_READER = ("projects/ATSS/atss/converters/convert.py", "_unpickle_trusted")
MODEL_BUILDERS = {"projects/ATSS/atss/engine/config.py"}
CHECKPOINTER_USERS = "projects/ATSS/atss/engine/"


def _python_files(*tops: str) -> List[str]:
    """Repository-relative paths of the .py files under ``tops`` (files or folders)."""
    found = []
    for top in tops:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            found.append(top)
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("wt"))
            found += [
                os.path.relpath(os.path.join(folder, f), ROOT)
                for f in sorted(files)
                if f.endswith(".py")
            ]
    return found


def _tree(relpath: str) -> ast.AST:
    with open(os.path.join(ROOT, relpath)) as f:
        return ast.parse(f.read(), relpath)


def _imported_modules(tree: ast.AST) -> List[str]:
    """Absolute module names imported anywhere in ``tree`` (relative imports excluded)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


# ------------------------------------------------------------------------------ the rules
def imports_the_test_suite(tree: ast.AST) -> List[str]:
    return [m for m in _imported_modules(tree) if m == "tests" or m.startswith("tests.")]


def imports_tools(tree: ast.AST) -> List[str]:
    return [m for m in _imported_modules(tree) if m == "tools" or m.startswith("tools.")]


def edits_sys_path(tree: ast.AST) -> List[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _dotted(node.func.value) == "sys.path":
                found.append(f"line {node.lineno}: sys.path.{node.func.attr}(...)")
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            base = t.value if isinstance(t, ast.Subscript) else t
            if _dotted(base) == "sys.path":
                found.append(f"line {node.lineno}: assignment to sys.path")
    return found


def calls_lazyconfig_load(tree: ast.AST) -> List[str]:
    return [
        f"line {n.lineno}: LazyConfig.load(...)"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _dotted(n.func).endswith("LazyConfig.load")
    ]


def builds_a_model(tree: ast.AST) -> List[str]:
    """``instantiate(<x>.model)`` calls: a model built from a config."""
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and _dotted(n.func).split(".")[-1] == "instantiate" and n.args:
            arg = n.args[0]
            if isinstance(arg, ast.Attribute) and arg.attr == "model":
                found.append(f"line {n.lineno}: instantiate({_dotted(arg) or '...'})")
    return found


def makes_a_checkpointer(tree: ast.AST) -> List[str]:
    """Calls of a ``...DetectionCheckpointer(...)`` class (subclassing is not a call)."""
    return [
        f"line {n.lineno}: {_dotted(n.func)}(...)"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _dotted(n.func).endswith("DetectionCheckpointer")
    ]


# Readers that build whatever a file names: pickle's, torch's (a pickle) and YAML's full ones.
CODE_RUNNING_READERS = {
    "torch.load",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "yaml.load",
    "yaml.load_all",
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
}


def reads_files_as_code(tree: ast.AST) -> List[str]:
    """Calls of :data:`CODE_RUNNING_READERS` and classes deriving from one, each named with the
    function it is in (``in <module>`` at the top level)."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            named = []
            if isinstance(child, ast.Call):
                named = [child.func]
            elif isinstance(child, ast.ClassDef):
                named = child.bases
            for name in filter(CODE_RUNNING_READERS.__contains__, map(_dotted, named)):
                found.append(f"line {child.lineno}: {name} in {function}")
            visit(child, function)

    visit(tree, "<module>")
    return found


RULES: Dict[str, Callable[[ast.AST], List[str]]] = {
    "imports_the_test_suite": imports_the_test_suite,
    "imports_tools": imports_tools,
    "edits_sys_path": edits_sys_path,
    "calls_lazyconfig_load": calls_lazyconfig_load,
    "builds_a_model": builds_a_model,
    "makes_a_checkpointer": makes_a_checkpointer,
    "reads_files_as_code": reads_files_as_code,
}

BROKEN = {
    "imports_the_test_suite": "from tests.atss_testing import tiny_model",
    "imports_tools": "import tools.benchmark",
    "edits_sys_path": "import sys\nsys.path[:0] = ['x']\nsys.path.insert(0, 'y')",
    "calls_lazyconfig_load": "cfg = LazyConfig.load('a.py')",
    "builds_a_model": "model = instantiate(cfg.model).eval()",
    "makes_a_checkpointer": "DetectionCheckpointer(model).load(path)",
    "reads_files_as_code": (
        "def f(p):\n    return torch.load(p, weights_only=True)\n"
        "class U(pickle.Unpickler):\n    pass\n"
        "cfg = yaml.unsafe_load(open(p))\n"
    ),
}
FOUND = {"edits_sys_path": 2, "reads_files_as_code": 3}  # else 1
FINE = (
    "import sys\nprint(sys.path)\n"
    "class C(DetectionCheckpointer):\n    pass\n"
    "g = instantiate(cfg.model.anchor_generator)\n"
    "from atss.utils.testing import tiny_model\n"
    "cfg = yaml.safe_load(s)\nstate = load_torch_file(p)\nself._torch_load(p)\n"
)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_finds_what_breaks_it_and_nothing_else(rule):
    """A snippet that breaks the rule is found (as many times as it breaks it); a snippet of
    legitimate look-alikes (reading sys.path, subclassing the checkpointer, instantiating a
    config node below ``model``, importing atss.utils.testing, YAML's safe loader and the
    project's safe readers) is not."""
    found = RULES[rule](ast.parse(BROKEN[rule]))
    assert len(found) == FOUND.get(rule, 1), found
    assert RULES[rule](ast.parse(FINE)) == []


# ------------------------------------------------------------------------------ the tree
OUTSIDE_TESTS = ("train_net.py", "demo.py", "tools", "configs", PACKAGE)


def _violations(rule, files, allowed=lambda path: False) -> List[str]:
    return [
        f"{path}: {what}"
        for path in files
        if not allowed(path)
        for what in RULES[rule](_tree(path))
    ]


def test_nothing_outside_tests_imports_the_test_suite():
    """Tools, entry points, configs and the package use atss.utils.testing, never tests/."""
    assert _violations("imports_the_test_suite", _python_files(*OUTSIDE_TESTS)) == []


def test_the_package_imports_nothing_from_tools():
    assert _violations("imports_tools", _python_files(PACKAGE)) == []


def test_no_file_edits_sys_path():
    """Imports resolve through the editable install (or PYTHONPATH set by a launcher)."""
    assert _violations("edits_sys_path", _python_files(*OUTSIDE_TESTS, "tests")) == []


def test_configs_are_loaded_only_by_load_config():
    assert (
        _violations(
            "calls_lazyconfig_load", _python_files(*OUTSIDE_TESTS), lambda p: p in CONFIG_READERS
        )
        == []
    )


def test_models_are_built_and_checkpoints_loaded_only_in_their_homes():
    """``instantiate(cfg.model)`` only in build_model's module; checkpointers only inside
    atss.engine (build_model, the train loop and the weights rule use them)."""
    files = _python_files(*OUTSIDE_TESTS)
    assert _violations("builds_a_model", files, lambda p: p in MODEL_BUILDERS) == []
    assert (
        _violations("makes_a_checkpointer", files, lambda p: p.startswith(CHECKPOINTER_USERS)) == []
    )


def test_files_are_unpickled_only_by_the_safe_readers_and_the_converters_opt_in():
    """torch.load, pickle's and YAML's full loaders only in atss/fileio.py and, for a file its
    owner trusts, the converter's --allow-pickle branch: every other reader goes through
    atss.fileio, which refuses a file that would run code."""
    converter, opt_in = TRUSTING_READER
    found = RULES["reads_files_as_code"](_tree(converter))
    assert found and all(f.endswith(f" in {opt_in}") for f in found), found
    files = _python_files(*OUTSIDE_TESTS)
    assert _violations("reads_files_as_code", files, lambda p: p in (FILEIO, converter)) == []


# ------------------------------------------------------------------------------ import cycles
def _package_import_graph() -> Dict[str, Set[str]]:
    """module -> the package modules it imports (anywhere in the file; ``from .x import y``
    counts ``x.y`` when that is a module)."""
    base = os.path.join(ROOT, "projects", "ATSS")
    modules = {}
    for path in _python_files(PACKAGE):
        name = os.path.relpath(os.path.join(ROOT, path), base)[:-3].replace(os.sep, ".")
        modules[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    graph = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    module = ".".join(parts + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` (its modules in order, the first repeated), or []."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_the_package_modules_import_each_other_without_cycles():
    """Function-level imports count: a cycle closed by an import inside a function still means
    two modules that each need the other."""
    graph = _package_import_graph()
    assert "atss.engine.config" in graph and "atss.data.builtin" in graph["atss.data.loading"]
    assert _cycle(graph) == []
