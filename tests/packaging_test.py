"""The wheel and the sdist (`python -m build`): the product under the one cxr_edge
namespace, its version from one place, no tests, studies, scripts or fixtures."""
import subprocess
import sys
import tarfile
import zipfile

import pytest

from cxr_edge.core.version import __version__
from tests.conftest import ROOT

PACKAGES = ("core", "edge", "node", "pipeline", "model", "export")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  pytest.importorskip("build", reason="the build package is not installed (cxr-edge[test])")
  out = tmp_path_factory.mktemp("dist")
  # --no-isolation: the installed setuptools, so that no test downloads anything.
  r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                      ROOT], capture_output=True, text=True, timeout=600, check=False)
  if "Unmet dependencies" in r.stdout + r.stderr:  # e.g. a device install without wheel
    pytest.skip("the build backend's dependencies are not installed: "
                + (r.stdout + r.stderr).strip().splitlines()[-1].strip())
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  return out


def test_the_wheel_holds_the_product_only(dist):
  (wheel,) = dist.glob("*.whl")
  assert wheel.name == f"cxr_edge-{__version__}-py3-none-any.whl"
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  assert tops == {"cxr_edge", f"cxr_edge-{__version__}.dist-info"}
  assert {n.split("/")[1] for n in names if n.startswith("cxr_edge/")} == set(PACKAGES)
  assert not [n for n in names if "_test.py" in n or "/tests/" in n or "studies" in n]
  # The released model is package data: a device install has it without a checkout.
  assert {f"cxr_edge/edge/released/{n}" for n in (
      "model_int8.tflite", "model_float32.tflite", "MODEL_CARD.md", "RELEASE.json")} <= set(names)
  metadata = zipfile.ZipFile(wheel).read(
      f"cxr_edge-{__version__}.dist-info/METADATA").decode()
  assert f"Version: {__version__}" in metadata
  # The device install: LiteRT and, where wheels exist, the DICOM decoders; no TensorFlow.
  edge = [line for line in metadata.splitlines()
          if line.startswith("Requires-Dist:") and 'extra == "edge"' in line]
  assert any("ai-edge-litert" in line for line in edge)
  assert any("cxr-edge[dicom]" in line and 'platform_machine == "aarch64"' in line
             for line in edge)
  assert not any("tensorflow" in line for line in edge)
  entry_points = zipfile.ZipFile(wheel).read(
      f"cxr_edge-{__version__}.dist-info/entry_points.txt").decode()
  assert "cxr-predict = cxr_edge.edge.predict:run" in entry_points
  assert "cxr-node = cxr_edge.node.node:run" in entry_points


def test_the_sdist_holds_the_product_and_what_builds_it(dist):
  (sdist,) = dist.glob("*.tar.gz")
  # Newer setuptools normalise the name (PEP 625): either spelling is this version.
  assert sdist.name in (f"cxr_edge-{__version__}.tar.gz", f"cxr-edge-{__version__}.tar.gz")
  with tarfile.open(sdist) as tar:
    names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
  tops = {n.split("/")[0] for n in names}
  assert tops == set(PACKAGES) | {"cxr_edge.egg-info", "LICENSE", "README.md", "PKG-INFO",
                                  "setup.cfg", "pyproject.toml"}
  assert not [n for n in names if n.endswith("_test.py")]
