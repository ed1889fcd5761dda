"""The package layering that BUILD.md's Layout describes, checked on the source.

Everything is one namespace, `cxr_edge`. `core` is the TensorFlow-free bottom layer and
imports no other package of ours; `edge`, the device runtime, imports only `core`;
`node`, the clinic node on the DICOM network, imports `core` and `edge`;
`pipeline` imports `core`; `model` imports `core` and `pipeline`; `export` may import all
of them. No product package imports `studies`, `tests` or `scripts`, and nothing anywhere
imports a bare `pipeline`, `model`, `export`, `edge` or `core` (the names other
distributions use too).
"""
import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ALLOWED = {
    "core": {"core"},
    "edge": {"core", "edge"},
    "node": {"core", "edge", "node"},
    "pipeline": {"core", "pipeline"},
    "model": {"core", "pipeline", "model"},
    "export": {"core", "pipeline", "model", "edge", "export"},
}
PACKAGES = tuple(ALLOWED)
BARE = set(PACKAGES)  # importable only as cxr_edge.<name>
NOT_PRODUCT = {"studies", "tests", "scripts"}
TF = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")


def _modules(package):
  folder = os.path.join(ROOT, package)
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")


def _imports(path):
  """Every module name a file imports, at any level (function-level imports count too)."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return found


def _python_files():
  for folder in PACKAGES + tuple(NOT_PRODUCT):
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
      for f in files:
        if f.endswith(".py"):
          yield os.path.join(dirpath, f)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_lower_layers(package):
  wrong = {}
  for m in _modules(package) + ["__init__"]:
    names = _imports(os.path.join(ROOT, package, m + ".py"))
    ours = {n.split(".")[1] for n in names if n.startswith("cxr_edge.") and n.count(".") >= 1}
    bad = (ours - ALLOWED[package]) | {n for n in names if n.split(".")[0] in NOT_PRODUCT}
    if bad:
      wrong[m] = sorted(bad)
  assert not wrong


def test_nothing_imports_a_bare_top_level_package():
  wrong = {os.path.relpath(p, ROOT): sorted(n for n in _imports(p) if n.split(".")[0] in BARE)
           for p in _python_files()}
  assert not {p: n for p, n in wrong.items() if n}


def test_nothing_edits_sys_path():
  edits = [os.path.relpath(p, ROOT) for p in _python_files()
           if "sys.path.insert" in open(p, encoding="utf-8").read()
           or "sys.path.append" in open(p, encoding="utf-8").read()]
  assert edits == [os.path.relpath(__file__, ROOT)]  # this test names them


def _loaded_after_import(module, also=()):
  code = ("import importlib, sys\n"
          f"for m in {TF!r}:\n"
          "  sys.modules[m] = None  # any import of them now fails\n"
          f"for m in {[module, *also]!r}:\n"
          "  importlib.import_module(m)\n"
          "print(sorted(m for m in sys.modules if m.startswith('cxr_edge.')))\n")
  # Run outside the checkout so that only the installed cxr_edge is importable.
  r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  return eval(r.stdout)  # pylint: disable=eval-used


@pytest.mark.parametrize("module", ["cxr_edge.edge"] + [f"cxr_edge.edge.{m}"
                                                       for m in _modules("edge")])
def test_every_edge_module_loads_only_core_and_edge(module):
  # One process per module: the two binaries both define --model, as binaries may.
  loaded = _loaded_after_import(module)
  assert module in loaded
  assert [m for m in loaded if m.split(".")[1] not in ("core", "edge")] == []


@pytest.mark.parametrize("module", [f"cxr_edge.node.{m}" for m in _modules("node")])
def test_every_node_module_loads_no_tensorflow_and_nothing_above_edge(module):
  loaded = _loaded_after_import(module)
  assert module in loaded
  assert [m for m in loaded if m.split(".")[1] not in ("core", "edge", "node")] == []


def test_the_core_loads_only_itself():
  # Imports accumulate, so one process importing every core module sees what each loads.
  loaded = _loaded_after_import("cxr_edge.core", [f"cxr_edge.core.{m}"
                                                  for m in _modules("core")])
  assert len(loaded) > len(_modules("core"))
  assert [m for m in loaded if m.split(".")[1] != "core"] == []


JOBS = {"cxr_edge.pipeline.convert": ["--input_dir=/nonexistent", "--output_dir=/tmp/x"],
        "cxr_edge.pipeline.verify": ["--tfrecord_dir=/nonexistent"],
        "cxr_edge.pipeline.benchmark_input": ["--data_dir=/nonexistent",
                                              "--image_dir=/nonexistent"],
        "cxr_edge.model.train": ["--data_dir=/nonexistent", "--model_dir=/tmp/x"],
        "cxr_edge.model.evaluate": ["--model_dir=/nonexistent", "--data_dir=/nonexistent",
                                    "--output_dir=/tmp/x"],
        "cxr_edge.export.export": ["--model_dir=/nonexistent", "--data_dir=/nonexistent",
                                   "--export_dir=/tmp/x"]}


def _run_without_tensorflow(module, args):
  code = ("import runpy, sys\n"
          f"for m in {TF!r}:\n"
          "  sys.modules[m] = None  # any import of them now fails\n"
          f"sys.argv = ['cxr-x'] + {args!r}\n"
          f"runpy.run_module({module!r}, run_name='__main__')\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)


@pytest.mark.parametrize("module", sorted(JOBS))
def test_argument_errors_come_before_tensorflow_loads(module):
  """A mistyped path costs no 20-second TensorFlow import."""
  r = _run_without_tensorflow(module, JOBS[module])
  assert r.returncode == 1, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "nonexistent" in lines[0], r.stderr
  assert ": error: " in lines[0] or ": FAILED: " in lines[0]  # cxr-verify fails a check


def test_a_tensorflow_job_in_a_device_install_names_the_extra(tmp_path):
  """Without TensorFlow (the [edge] install) a training-side job says what to install."""
  r = _run_without_tensorflow("cxr_edge.pipeline.convert", [f"--input_dir={ROOT}/data/sample",
                                                             f"--output_dir={tmp_path}/o"])
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(lines) == 1, r.stderr
  assert "needs TensorFlow" in lines[0] and "cxr-edge[train]" in lines[0]


def _our_imports_closure(module):
  """Every module of ours `module` imports, directly or through others (function-level
  imports included), read from the source."""
  seen, todo = set(), [module]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    parts = name.split(".")
    path = os.path.join(ROOT, *parts[1:]) + ".py"
    if not os.path.isfile(path):
      path = os.path.join(ROOT, *parts[1:], "__init__.py")
    if not os.path.isfile(path):
      continue
    for imported in _imports(path):
      if imported.startswith("cxr_edge.") and imported.count(".") >= 2:
        todo.append(".".join(imported.split(".")[:3]))  # the module, not a name in it
  return seen


def test_evaluation_does_not_import_training():
  closure = _our_imports_closure("cxr_edge.model.evaluate_lib")
  assert "cxr_edge.model.inference" in closure
  assert not {"cxr_edge.model.train_lib", "cxr_edge.model.callbacks"} & closure
  assert "cxr_edge.model.train_lib" in _our_imports_closure("cxr_edge.model.train")
