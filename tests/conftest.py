"""Shared fixtures: tiny synthetic image trees, the embedded sample, the shared data."""
import contextlib
import importlib
import io
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(ROOT, "data", "sample")
SHARED_DIR = os.path.join(ROOT, "..", "shared", "data", "chest_xray")


def until(condition, within: float = 10.0, poll: float = 0.05) -> bool:
  """Whether `condition()` holds within `within` seconds, asked every `poll` seconds (a
  background part's effect, awaited without a fixed sleep)."""
  deadline = time.monotonic() + within
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(poll)
  return condition()


def image_bytes(fmt: str = "JPEG", mode: str = "L", size=(40, 32), seed: int = 0) -> bytes:
  """A small random-textured image, encoded; different seeds give different bytes."""
  rng = np.random.default_rng(seed)
  channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
  base = np.linspace(0, 255, size[0] * size[1]).reshape(size[1], size[0])
  arr = (base[..., None] + rng.integers(0, 60, (size[1], size[0], channels))) % 256
  arr = arr.astype(np.uint8)
  im = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
  out = io.BytesIO()
  im.save(out, format=fmt)
  return out.getvalue()


def write_file(path: str, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


def make_tree(root: str, patients_per_class: int = 12, images_per_patient: int = 2,
              size=(40, 32)) -> str:
  """A class-folder tree with release-style names: IM-NNNN-K (NORMAL), personN_virus_K."""
  seed = 0
  for p in range(patients_per_class):
    for k in range(images_per_patient):
      seed += 1
      write_file(os.path.join(root, "NORMAL", f"IM-{p:04d}-{k + 1:04d}.jpeg"),
                 image_bytes(size=size, seed=seed))
      seed += 1
      write_file(os.path.join(root, "PNEUMONIA", f"person{p}_virus_{k}.jpeg"),
                 image_bytes(size=size, seed=seed, mode="RGB"))
  return root


@pytest.fixture
def image_tree(tmp_path):
  return make_tree(str(tmp_path / "images"))


def require_tensorflow():
  """Skips a test that trains or exports where TensorFlow is not installed."""
  pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device install "
                      "without the train extra): this test trains or exports a model")


@pytest.fixture(scope="session")
def released_model():
  """The released int8 package shipped in edge/released/: what a device install runs, so
  the device-side tests need no TensorFlow."""
  from cxr_edge.edge import released  # pylint: disable=g-import-not-at-top
  return released.path()


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory):
  """The embedded sample converted once per session (train has 2 shards)."""
  require_tensorflow()
  from cxr_edge.pipeline import convert_config  # pylint: disable=g-import-not-at-top
  from cxr_edge.pipeline import convert_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("sample_records"))
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=SAMPLE_DIR, output_dir=out, num_shards=2, num_workers=2, overwrite=True))
  return out


@pytest.fixture(scope="session")
def trained_model(sample_records, tmp_path_factory):
  """A tiny binary seed_cnn (48 px, width 0.25) trained a few steps on the sample.

  Its threshold comes from validation (Youden J), so tests see a threshold other than
  0.5, and the QAT run (same rule) its own.
  """
  from cxr_edge.model import train_lib  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import train_config  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp("model"))
  train_lib.train(train_config.TrainConfig(
      data_dir=sample_records, model_dir=model_dir, model="seed_cnn", image_size=48,
      epochs=1, batch_size=16, width=0.25, steps_per_epoch=3, threshold_rule="youden",
      task="binary", verbose=0))
  return model_dir


def sample_subset(root: str, per_class: int) -> str:
  """A class-folder tree of the first `per_class` sample films of each class (symlinks)."""
  for label in ("NORMAL", "PNEUMONIA"):
    os.makedirs(os.path.join(root, label), exist_ok=True)
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[:per_class]:
      os.symlink(os.path.join(SAMPLE_DIR, label, name), os.path.join(root, label, name))
  return root


@pytest.fixture(scope="session")
def qat_model(trained_model, sample_records, tmp_path_factory):
  """trained_model fine-tuned quantization-aware for one short epoch (cxr-train --qat)."""
  from cxr_edge.model import train_lib  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp("qat"))
  train_lib.train(train_lib.qat_config(trained_model, model_dir, sample_records, epochs=1,
                                       steps_per_epoch=3, verbose=0))
  return model_dir


@pytest.fixture(scope="session")
def exported(trained_model, qat_model, sample_records, tmp_path_factory):
  """trained_model exported with every variant (qat_int8 from qat_model, few latency
  runs), its report scoring a 20-film external folder too."""
  from cxr_edge.export import export_lib  # pylint: disable=g-import-not-at-top
  export_dir = str(tmp_path_factory.mktemp("export") / "e")
  external = sample_subset(str(tmp_path_factory.mktemp("external")), 10)
  report = export_lib.export(trained_model, sample_records, export_dir, calibration_samples=32,
                             latency_runs=5, external_dir=external, qat_model_dir=qat_model)
  return export_dir, report


@pytest.fixture(scope="session")
def subtype_model(sample_records, tmp_path_factory):
  """trained_model's recipe with the three-class head (--task=subtype), an external
  folder of sample films scored after its epochs."""
  from cxr_edge.model import train_lib  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import train_config  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp("subtype_model"))
  external = sample_subset(str(tmp_path_factory.mktemp("subtype_external")), 12)
  train_lib.train(train_config.TrainConfig(
      data_dir=sample_records, model_dir=model_dir, model="seed_cnn", image_size=48,
      epochs=2, batch_size=16, width=0.25, steps_per_epoch=3, task="subtype",
      external_dir=external, verbose=0))
  return model_dir


@pytest.fixture(scope="session")
def subtype_exported(subtype_model, sample_records, tmp_path_factory):
  """subtype_model exported (float32, int8), its report scoring its external folder."""
  from cxr_edge.export import export_lib  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  export_dir = str(tmp_path_factory.mktemp("subtype_export") / "e")
  external = model_dir_lib.read_info(subtype_model)["external_dir"]
  report = export_lib.export(subtype_model, sample_records, export_dir, calibration_samples=32,
                             latency_runs=3, variants=("float32", "int8"),
                             external_dir=external)
  return export_dir, report


def require_shared(part: str = "train"):
  """The shared data set's `part` folder (train/ or external/); skips where it is absent."""
  path = os.path.join(SHARED_DIR, part)
  if not os.path.isdir(path):
    pytest.skip(f"shared data set not found at {path} (present in CI, absent in a "
                "user's clone)")
  return path


# The job modules: each defines its flags at import, as a binary does, and several share
# flag names (--data_dir, --model, ...), so one process can hold only one job's flags.
JOBS = ("cxr_edge.pipeline.convert", "cxr_edge.pipeline.verify", "cxr_edge.pipeline.benchmark_input", "cxr_edge.model.train",
        "cxr_edge.model.evaluate", "cxr_edge.export.export", "cxr_edge.edge.predict", "cxr_edge.edge.calibrate",
        "cxr_edge.node.node", "cxr_edge.node.monitor")


def job(module: str):
  """Imports job `module` with its own flags defined, as if it were the only binary.

  Flags of other job modules are removed first and the module is re-imported, so its
  flag holders are the live ones. Call it inside the test, never at module import.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  assert module in JOBS, module
  by_module = flags.FLAGS.flags_by_module_dict()
  for name in JOBS:
    for flag in list(by_module.get(name, [])):  # deleting mutates these lists
      if flag.name in flags.FLAGS:
        delattr(flags.FLAGS, flag.name)
  if module in sys.modules:
    return importlib.reload(sys.modules[module])
  return importlib.import_module(module)


def run_main(module: str, *args: str, **flag_values):
  """Runs job `module`'s main() in-process with flag values set (absl's flagsaver).

  Positional `args` are main's extra arguments (cxr-predict's image paths). Exits as the
  binary would (SystemExit on error); required flags are the caller's business.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from cxr_edge.core import errors  # pylint: disable=g-import-not-at-top
  mod = job(module)
  with flagsaver.flagsaver(**flag_values):
    flags.FLAGS.mark_as_parsed()
    try:
      return mod.main([module, *args])
    except errors.CxrError as e:  # as cli.run turns it into the binary's one line
      raise SystemExit(f"{console_script(module)}: error: {e}") from e


def console_script(module: str) -> str:
  """The command a job module is installed as (setup.cfg's console_scripts)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return next(e.name for e in importlib.metadata.entry_points(group="console_scripts")
              if e.value == f"{module}:run")


@contextlib.contextmanager
def parsed_flags(module: str, **flag_strings):
  """Job `module`'s flags parsed from strings and validated, as on the command line."""
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  job(module)
  with flagsaver.as_parsed(**flag_strings):
    yield


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs `python -m module args` as a user would (no log settings of ours), capturing output."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def dicom_bytes(pixels: np.ndarray, **kwargs) -> bytes:
  """A DICOM Part 10 file built with pydicom at test time (tests/dicom_files.py)."""
  from tests import dicom_files  # pylint: disable=g-import-not-at-top
  return dicom_files.encode_dicom(pixels, **kwargs)


def film_pixels(seed: int = 0, size=(48, 64)) -> np.ndarray:
  """uint8 [H, W] with every value 0..255 present (a window's ends are exercised)."""
  rng = np.random.default_rng(seed)
  values = np.arange(size[0] * size[1]) % 256
  rng.shuffle(values)
  return values.reshape(size).astype(np.uint8)
