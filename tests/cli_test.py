"""Every console script's --help: the job's usage docstring and its own flags."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _help(module, entry="run"):
  # `python -c`, like a console script: __main__ is a wrapper without the job's docstring.
  code = (f"import sys; sys.argv = ['cxr-x', '--help']\n"
          f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]} as job\n"
          f"job.{entry}()\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.mark.parametrize("module, usage, own_flag, required", [
    ("edge.predict", "cxr-predict --model=", "--threads", "--model"),
    ("model.train", "cxr-train --data_dir=", "--init_from", "--data_dir"),
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
  if module == "model.train":
    assert "depthwise-separable" not in out


@pytest.mark.parametrize("body, status, message", [
    ("raise KeyboardInterrupt", 130, "cxr-fake: interrupted"),
    ("open('/nonexistent-folder/x.json', 'w')", 1,
     "cxr-fake: error: No such file or directory: /nonexistent-folder/x.json"),
])
def test_interrupts_and_os_errors_end_in_one_line(body, status, message):
  code = ("import sys\n"
          "from pipeline import cli\n"
          "sys.argv = ['cxr-fake']\n"
          f"def main(argv):\n  {body}\n"
          "cli.run(main, '__main__', prog='cxr-fake')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=60, check=False)
  assert r.returncode == status
  assert r.stderr.strip() == message  # no traceback
