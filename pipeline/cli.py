"""What every cxr-edge command line shares. TensorFlow-free (cxr-predict uses it).

A console script's `__main__` is a generated wrapper with no docstring and no flags, so
absl's `--help` printed only "USAGE: cxr-x [flags]". `run` shows the job's own usage
docstring and its own flags instead, required ones marked, and exits 0 as help should.
"""
import os
import shutil
import sys
import time
from typing import Callable, List, Sequence

from absl import app
from absl import flags

_HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml"}


def run(main: Callable, job_module: str, required: Sequence[str] = (),
        prog: str = "cxr-edge") -> None:
  """Runs a job's `main` under absl, as its console script.

  Ctrl-C ends it with "PROG: interrupted" and status 130, and an operating-system error
  the job did not handle (an unwritable or missing output folder, a full disk) with one
  line and status 1, instead of a traceback.

  Args:
    main: the job's main(argv).
    job_module: the job module's __name__ (its flags and docstring are the help).
    required: flags the job cannot run without.
    prog: the command's name in those messages.
  """
  for name in required:
    flag = flags.FLAGS[name]
    if "(required)" not in (flag.help or ""):
      flag.help = f"{flag.help} (required)"
  flags.mark_flags_as_required(list(required))
  module = sys.modules[job_module]
  wrapper = sys.modules["__main__"]
  if wrapper is not module:
    # absl formats the docstring with %; the usage examples hold none, but be safe.
    wrapper.__doc__ = (module.__doc__ or "").replace("%", "%%")
    for flag in flags.FLAGS.get_flags_for_module(job_module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  try:
    app.run(main)
  except KeyboardInterrupt:
    sys.stderr.write(f"\n{prog}: interrupted\n")
    sys.exit(130)
  except OSError as e:
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    sys.exit(f"{prog}: error: {e.strerror or e}{where}")
  except SystemExit as e:
    # absl exits 1 after printing asked-for help; asking for help is not a failure.
    if e.code == 1 and set(sys.argv[1:]) & _HELP_FLAGS:
      sys.exit(0)
    raise


class Progress:
  """Throttled progress of a long loop: reports at most every `every_s` seconds.

  `report(done, total, rate_per_s, seconds_left, extra)` is called with the counts; with
  `at_end`, also once when done reaches total (else the caller's summary ends the run).
  """

  def __init__(self, total: int, every_s: float, report: Callable, at_end: bool = True):
    self.total, self.every_s, self.report, self.at_end = total, every_s, report, at_end
    self.start = self.last = time.monotonic()

  def update(self, done: int, extra: str = "") -> None:
    now = time.monotonic()
    finished = done >= self.total
    if (finished and not self.at_end) or (now - self.last < self.every_s and not finished):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    self.report(done, self.total, rate, (self.total - done) / max(rate, 1e-9), extra)


def remove_own(folder: str, names: Sequence[str]) -> List[str]:
  """--overwrite: removes the entries `names` a job writes in folder, and nothing else.

  Returns:
    The other entries of folder, kept (sorted).
  """
  for name in names:
    path = os.path.join(folder, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  return sorted(set(os.listdir(folder)) - set(names)) if os.path.isdir(folder) else []
