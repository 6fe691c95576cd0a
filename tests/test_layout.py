"""The shape of the house: module sizes, function lengths, no import cycle, the
`kernels/` folder never importable as a top-level package, public names."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dcam"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
#: Modules allowed to be longer (the zoo's training script is one long recipe).
LONG_MODULES = {"dcam/zoo/train.py"}


def _modules():
    for p in sorted(PACKAGE.rglob("*.py")):
        yield p, p.relative_to(ROOT).as_posix()


def _module_name(rel: str) -> str:
    name = rel[:-3].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def test_no_module_over_500_lines():
    long = {rel: len(p.read_text().splitlines()) for p, rel in _modules()}
    over = {rel: n for rel, n in long.items() if n > MAX_MODULE_LINES and rel not in LONG_MODULES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_long_functions_say_why():
    """A function over ~80 lines carries a comment saying why (``# long:``) in its first lines."""
    offenders = []
    for p, rel in _modules():
        if rel in LONG_MODULES:
            continue
        src = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(src))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                head = "\n".join(src[node.lineno - 1:node.lineno + 12])
                if n > MAX_FUNCTION_LINES and "# long:" not in head:
                    offenders.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not offenders, offenders


def _imports(tree: ast.AST, module: str, is_package: bool):
    """Every dcam module ``module`` imports (module level and inside functions)."""
    pkg = module if is_package else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dcam")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("dcam"):
                continue
            out.add(target)
            for a in node.names:  # `from pkg import submodule`
                out.add(f"{target}.{a.name}")
    return out


def test_no_import_cycle():
    files = {_module_name(rel): p for p, rel in _modules()}
    graph = {}
    for name, p in files.items():
        deps = _imports(ast.parse(p.read_text()), name, p.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    def real(a, b):
        return not (b.startswith(a + ".") and files[a].name == "__init__.py")
    graph = {a: {b for b in bs if real(a, b)} for a, bs in graph.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v, counter=[0]):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_cli_module_is_imported_as_a_library():
    for p, rel in _modules():
        if rel.startswith("dcam/cli/") or rel == "dcam/__main__.py":
            continue
        deps = _imports(ast.parse(p.read_text()), _module_name(rel), p.name == "__init__.py")
        assert not any(d.startswith("dcam.cli") for d in deps), f"{rel} imports the CLI"


# As if triton were not installed: `import triton` fails and importlib.util.find_spec("triton") is None
_BLOCK_TRITON = """
import sys
sys.modules["triton"] = None
"""


def _fresh_python(code: str, block_triton: bool = False, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    src = (_BLOCK_TRITON if block_triton else "") + code
    return subprocess.run([sys.executable, "-c", src], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=300)


#: where the PyPI `kernels` package is installed (transformers >= 5.25 requires it), None where it is not: asked
#: from a folder without ours, so that the repository's `kernels/` folder cannot answer
def _installed_kernels(tmp_path):
    proc = _fresh_python("import importlib.util\n"
                         "spec = importlib.util.find_spec('kernels')\n"
                         "print(spec.origin if spec is not None else None)", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin = proc.stdout.strip()
    return None if origin == "None" else origin


@pytest.mark.parametrize("block_triton", [False, True], ids=["with-triton", "without-triton"])
def test_transformers_imports_from_the_repo_root(block_triton, tmp_path):
    """With the repository root on sys.path (``python -c`` started there), the
    `kernels/` folder must not pass for the PyPI `kernels` package that
    transformers probes for: transformers sees what it sees from anywhere else
    (the PyPI package where it is installed, as transformers 5.25 requires, else
    none)."""
    probe = ("from transformers import LlamaConfig\n"
             "from transformers.utils.import_utils import is_kernels_available\n"
             "print('kernels available:', is_kernels_available())")
    proc = _fresh_python(probe, block_triton)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _installed_kernels(tmp_path) is not None
    assert f"kernels available: {expected}" in proc.stdout
    elsewhere = _fresh_python(probe, block_triton, cwd=tmp_path)
    assert elsewhere.returncode == 0 and f"kernels available: {expected}" in elsewhere.stdout


def test_kernels_folder_is_not_a_top_level_package(tmp_path):
    proc = _fresh_python(
        "import importlib\n"
        "try:\n"
        "    k = importlib.import_module('kernels')\n"
        "    print('namespace' if getattr(k, '__file__', None) is None else 'package ' + k.__file__)\n"
        "except ModuleNotFoundError:\n"
        "    print('absent')\n"
        "try:\n"
        "    importlib.import_module('kernels.refine')\n"
        "    print('refine imported')\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
        "import dcam.kernels.refine\n"
        "print('dcam.kernels ok')\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.split("\n")[:2]
    installed = _installed_kernels(tmp_path)
    if installed is None:  # our folder alone: at most a namespace, whose kernels.refine refuses itself
        assert first in ("namespace", "absent")
        assert second == "refused: kernels.refine: dcam's Triton kernels are imported as dcam.kernels, not as a " \
                         "top-level 'kernels' package"
    else:  # the PyPI package (a regular one) wins over our folder (a namespace portion), which adds nothing to it
        assert first == f"package {installed}"
        assert second == "refused: No module named 'kernels.refine'"
    assert "dcam.kernels ok" in proc.stdout


def test_dcam_works_without_triton():
    proc = _fresh_python("import torch, dcam\n"
                         "print(dcam.available_backends())\n"
                         "a = torch.rand(1, 4, 3); g = torch.randn(1, 2, 4, 3)\n"
                         "print(tuple(dcam.diffusion_cam(a, g, (2, 2)).maps.shape))", block_triton=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'triton'" not in proc.stdout and "(1, 2, 2, 2)" in proc.stdout


def test_public_names():
    import dcam

    for name in ("pool_gradients", "refine", "diffusion_cam", "CamConfig", "Explainer", "Explanation",
                 "available_backends", "evaluate", "InputError", "RawMaps", "Refined"):
        assert getattr(dcam, name) is not None, name
    assert callable(dcam.zoo.load_default)
    assert dcam.evaluate is dcam.eval.runner.evaluate
    assert dcam.Explainer.__module__ == "dcam.explain" and dcam.Explanation.__module__ == "dcam.explanation"


def test_stages_live_in_their_folders():
    for stage in ("ops", "probe", "probe/adapters", "methods", "eval", "eval/datasets", "cli", "zoo", "render"):
        assert (PACKAGE / stage / "__init__.py").exists(), stage
    for method in ("diffusion_cam", "grad_cam", "llava_cam", "tam"):
        assert (PACKAGE / "methods" / f"{method}.py").exists()
    assert not (ROOT / "kernels" / "__init__.py").exists()
    for top in ("dcam", "kernels", "csrc", "tests", "bench", "setup.py"):
        assert (ROOT / top).exists(), top
