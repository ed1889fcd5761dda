"""What every cxr-edge command line shares. TensorFlow-free (cxr-predict uses it).

A console script's `__main__` is a generated wrapper with no docstring and no flags, so
absl's `--help` printed only "USAGE: cxr-x [flags]". `run` shows the job's own usage
docstring and its own flags instead, required ones marked, and exits 0 as help should.
"""
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags

_HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml"}


def run(main: Callable, job_module: str, required: Sequence[str] = ()) -> None:
  """Runs a job's `main` under absl, as its console script.

  Args:
    main: the job's main(argv).
    job_module: the job module's __name__ (its flags and docstring are the help).
    required: flags the job cannot run without.
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
  except SystemExit as e:
    # absl exits 1 after printing asked-for help; asking for help is not a failure.
    if e.code == 1 and set(sys.argv[1:]) & _HELP_FLAGS:
      sys.exit(0)
    raise
