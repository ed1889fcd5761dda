"""Every console script's --help, one-line errors, quiet logs."""
import os
import re
import subprocess
import sys

import pytest

from cxr_edge.core.version import __version__
from tests.conftest import JOBS, ROOT, console_script, job


def _help(module, entry="run"):
  # `python -c`, like a console script: __main__ is a wrapper without the job's docstring.
  code = (f"import sys; sys.argv = ['cxr-x', '--help']\n"
          f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]} as job\n"
          f"job.{entry}()\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.mark.parametrize("module, usage, own_flag, required", [
    ("cxr_edge.edge.calibrate", "cxr-calibrate --image_dir=", "--threads", "--output_dir"),
    ("cxr_edge.model.train", "cxr-train --data_dir=", "--init_from", "--data_dir"),
])
def test_help_shows_the_jobs_docstring_and_own_flags(module, usage, own_flag, required):
  r = _help(module)
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout
  assert "Usage:" in out and usage in out
  assert own_flag in out
  flag_block = out[out.index(f"  {required}:"):]
  assert "(required)" in flag_block.split("\n  --")[0]
  assert "--helpfull" in out and "--alsologtostderr" not in out  # absl's own stay hidden
  if module == "cxr_edge.model.train":
    assert "depthwise-separable" not in out


@pytest.mark.parametrize("body, status, message", [
    ("raise KeyboardInterrupt", 130, "cxr-fake: interrupted"),
    ("open('/nonexistent-folder/x.json', 'w')", 1,
     "cxr-fake: error: No such file or directory: /nonexistent-folder/x.json"),
    ("from cxr_edge.core import errors; raise errors.ConversionError('--input_dir is empty')",
     1, "cxr-fake: error: --input_dir is empty"),
])
def test_interrupts_and_os_errors_end_in_one_line(body, status, message):
  code = ("import sys\n"
          "from cxr_edge.core import cli\n"
          "sys.argv = ['cxr-fake']\n"
          f"def main(argv):\n  {body}\n"
          "cli.run(main, '__main__', prog='cxr-fake')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=60, check=False)
  assert r.returncode == status
  assert r.stderr.strip() == message  # no traceback


@pytest.mark.parametrize("module", JOBS)
def test_every_job_has_version_even_without_its_required_flags(module, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [console_script(module), "--version"])
  with pytest.raises(SystemExit) as e:
    job(module).run()
  assert e.value.code == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == f"{console_script(module)} (cxr-edge) {__version__}"
  # The device jobs also name the model they run without --model.
  from cxr_edge.edge import released  # pylint: disable=g-import-not-at-top
  device = module.startswith(("cxr_edge.edge.", "cxr_edge.node."))
  assert lines[1:] == ([released.describe()] if device else [])


def test_help_lists_version():
  assert "--[no]version: print the cxr-edge version" in _help("cxr_edge.edge.predict").stdout


@pytest.mark.parametrize("module", JOBS)
def test_no_usage_example_pools_the_external_films_into_training(module):
  """`.../chest_xray` holds train/ and external/: converting it trains on external films."""
  doc = job(module).__doc__
  assert not re.search(r"--(input|image)_dir=\S*chest_xray/?(\s|$)", doc), doc


def test_a_bad_flag_value_is_one_line_even_for_a_job_that_passes_unknown_flags_on():
  r = subprocess.run([sys.executable, "-m", "cxr_edge.pipeline.convert", "--input_dir=x",
                      "--output_dir=y", "--split_ratios=0.5,0.5,0.5"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines() == [
      "cxr-convert: error: flag --split_ratios=0.5,0.5,0.5: split ratios must be >= 0 and sum "
      "to 1, got '0.5,0.5,0.5'"]


def test_the_version_has_one_home():
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  assert importlib.metadata.version("cxr-edge") == __version__


def test_quiet_logging_keeps_our_info_and_everyones_warnings():
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from cxr_edge.core import cli  # pylint: disable=g-import-not-at-top
  cli._configure_logging()  # pylint: disable=protected-access
  keep = logging.get_absl_handler().filters[-1].filter

  def record(path, level):
    return std_logging.LogRecord("x", level, path, 1, "message", None, None)

  ours = os.path.join(cli._ROOT, "model", "train_lib.py")  # pylint: disable=protected-access
  theirs = "/usr/lib/python3/site-packages/tensorflow/python/saved_model/save.py"
  assert keep(record(ours, std_logging.INFO))
  assert not keep(record(theirs, std_logging.INFO))
  assert keep(record(theirs, std_logging.WARNING))
  old = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.DEBUG)  # --verbosity=1: everything
    assert keep(record(theirs, std_logging.INFO))
  finally:
    logging.set_verbosity(old)


def test_native_stderr_quiet_discards_only_inside_the_block():
  code = ("import os\n"
          "from cxr_edge.core import cli\n"
          "os.write(2, b'before\\n')\n"
          "with cli.native_stderr_quiet():\n"
          "  os.write(2, b'native chatter\\n')\n"
          "os.write(2, b'after\\n')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=60, check=False)
  assert r.returncode == 0 and r.stderr == "before\nafter\n"


def _run_job(module, *args):
  """A job as its console script runs it: `cli.run` over real argv."""
  code = (f"import sys; sys.argv = ['{console_script(module)}', *{list(args)!r}]\n"
          f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]} as job\n"
          "job.run()\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.mark.parametrize("module, args, says", [
    # A hyphen: cxr-convert hands unknown flags on to Beam, which ignored this one.
    ("cxr_edge.pipeline.convert", ["--input-dir=x", "--output_dir=y"],
     "cxr-convert: error: --input-dir is not a flag; did you mean --input_dir? (flags are "
     "spelled with underscores)"),
    ("cxr_edge.pipeline.convert", ["--input_dir=x", "--output_dir=y", "--shard_sise_mb=3"],
     "cxr-convert: error: unknown flag --shard_sise_mb; did you mean --shard_size_mb?"),
    ("cxr_edge.edge.predict", ["--modle=m.tflite", "a.png"],
     "cxr-predict: error: unknown flag --modle; did you mean --model?"),
    ("cxr_edge.node.node", ["--spool_dir=s", "--max-associations", "3"],
     "cxr-node: error: --max-associations is not a flag; did you mean --max_associations? "
     "(flags are spelled with underscores)"),
    ("cxr_edge.model.train", ["--data_dir=d", "--model_dir=m", "--no-qat"],
     "cxr-train: error: --no-qat is not a flag; did you mean --noqat? (flags are spelled "
     "with underscores)"),
    ("cxr_edge.model.train", ["--model_dir=m"],
     "cxr-train: error: --data_dir is required (see cxr-train --help)"),
    ("cxr_edge.pipeline.convert", [],
     "cxr-convert: error: --input_dir and --output_dir are required (see cxr-convert --help)"),
    ("cxr_edge.edge.calibrate", ["--image_dir=i", "--output_dir=o", "extra"],
     "cxr-calibrate: error: unexpected arguments: extra (see cxr-calibrate --help)"),
])
def test_a_flag_mistake_is_one_line_naming_the_fix(module, args, says):
  r = _run_job(module, *args)
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [says]


def test_a_value_after_its_flag_is_not_taken_for_a_flag():
  r = _run_job("cxr_edge.edge.predict", "--threads", "-1", "--info")
  assert "unknown flag" not in r.stderr and "flag --threads=-1" in r.stderr, r.stderr


def test_a_logged_exception_keeps_its_reason_on_the_quiet_line():
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from cxr_edge.core import cli  # pylint: disable=g-import-not-at-top
  try:
    raise OSError("name does not resolve")
  except OSError:
    import sys as sys_  # pylint: disable=g-import-not-at-top,reimported
    record = std_logging.LogRecord("x", std_logging.ERROR, "p", 1, "forwarding failed", None,
                                   sys_.exc_info())
  line = cli._ShortFormatter().format(record)  # pylint: disable=protected-access
  assert line.endswith("ERROR: forwarding failed (OSError: name does not resolve)")
  assert "Traceback" not in line
