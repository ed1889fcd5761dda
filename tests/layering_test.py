"""The package layering that BUILD.md describes, checked on the source.

pipeline/ is the bottom layer (it imports no other package of ours); model/ may import
pipeline/; edge/ is the TensorFlow-free runtime and imports neither model/ code that
needs TensorFlow nor export/; export/ may import all three; no product package imports
studies/.
"""
import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("pipeline", "model", "export", "edge")
OURS = PACKAGES + ("studies",)  # studies/ may import the product, never the reverse
ALLOWED = {
    "pipeline": {"pipeline"},
    "model": {"pipeline", "model"},
    "edge": {"pipeline", "model", "edge"},  # model.metrics only: numpy (checked below)
    "export": {"pipeline", "model", "export", "edge"},
}


def _modules(package):
  folder = os.path.join(ROOT, package)
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")


def _imported_packages(package, module):
  tree = ast.parse(open(os.path.join(ROOT, package, module + ".py"), encoding="utf-8").read())
  found = set()
  for node in ast.walk(tree):  # function-level imports count too
    if isinstance(node, ast.Import):
      found |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module.split(".")[0])
  return found & set(OURS)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_lower_layers(package):
  wrong = {m: sorted(_imported_packages(package, m) - ALLOWED[package])
           for m in _modules(package)}
  assert not {m: w for m, w in wrong.items() if w}


@pytest.mark.parametrize("module", ["edge"] + [f"edge.{m}" for m in _modules("edge")])
def test_every_edge_module_imports_without_tensorflow(module):
  # One process per module: the two binaries both define --model, as binaries may.
  code = ("import importlib, sys\n"
          "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'):\n"
          "  sys.modules[m] = None  # any import of them now fails\n"
          f"importlib.import_module({module!r})\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('pipeline', 'model', 'export', 'edge')))\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  loaded = eval(r.stdout)  # pylint: disable=eval-used
  assert module in loaded and not any(m.startswith("export") for m in loaded)


JOBS = {"pipeline.convert": ["--input_dir=/nonexistent", "--output_dir=/tmp/x"],
        "pipeline.verify": ["--tfrecord_dir=/nonexistent"],
        "model.train": ["--data_dir=/nonexistent", "--model_dir=/tmp/x"],
        "model.evaluate": ["--model_dir=/nonexistent", "--data_dir=/nonexistent",
                           "--output_dir=/tmp/x"],
        "export.export": ["--model_dir=/nonexistent", "--data_dir=/nonexistent",
                          "--export_dir=/tmp/x"]}


@pytest.mark.parametrize("module", sorted(JOBS))
def test_argument_errors_come_before_tensorflow_loads(module):
  """A mistyped path costs no 20-second TensorFlow import (issue 11 item 17)."""
  code = ("import runpy, sys\n"
          "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'):\n"
          "  sys.modules[m] = None  # any import of them now fails\n"
          f"sys.argv = ['cxr-x'] + {JOBS[module]!r}\n"
          f"runpy.run_module({module!r}, run_name='__main__')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "nonexistent" in lines[0], r.stderr
  assert ": error: " in lines[0] or ": FAILED: " in lines[0]  # cxr-verify fails a check
