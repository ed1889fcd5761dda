"""What every cxr-edge command line shares. TensorFlow-free (cxr-predict uses it).

A console script's `__main__` is a generated wrapper with no docstring and no flags, so
absl's `--help` printed only "USAGE: cxr-x [flags]". `run` shows the job's own usage
docstring and its own flags instead, required ones marked, and exits 0 as help should.

Quiet by default: a job shows warnings and its own progress and summary, not the INFO
lines of TensorFlow, Keras and absl nor the CUDA probing of a machine without a GPU;
`--verbosity=1` shows everything.
"""
import contextlib
import difflib
import logging as std_logging
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from cxr_edge.core import errors
from cxr_edge.core.version import __version__

# Our packages: their INFO lines are the jobs' progress and stay visible when quiet.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUR_DIRS = tuple(os.path.join(_ROOT, p) + os.sep
                  for p in ("core", "pipeline", "model", "export", "edge", "node", "studies"))

_HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml"}


def run(main: Callable, job_module: str, required: Sequence[str] = (),
        prog: str = "cxr-edge", pass_unknown: bool = False,
        about: Optional[Callable[[], str]] = None) -> None:
  """Runs a job's `main` under absl, as its console script.

  Ctrl-C ends it with "PROG: interrupted" and status 130; any `errors.CxrError` and an
  operating-system error the job did not handle (an unwritable or missing output folder,
  a full disk) end it with one line, "PROG: error: ...", and status 1, instead of a
  traceback (`--verbosity=1` shows the traceback too). `--version` prints the version.

  Args:
    main: the job's main(argv).
    job_module: the job module's __name__ (its flags and docstring are the help).
    required: flags the job cannot run without.
    prog: the command's name in those messages.
    pass_unknown: flags the job does not define reach main's argv (for a job that hands
      them on, e.g. to Beam) instead of being refused by absl; main must check them.
    about: a second line for `--version` (the device jobs name their default model).
  """
  if "version" not in flags.FLAGS:
    flags.DEFINE_boolean("version", False, "print the cxr-edge version and exit")
  for shown_for in {job_module, sys.argv[0]}:  # --help shows the key flags of either
    flags.FLAGS.register_key_flag_for_module(shown_for, flags.FLAGS["version"])
  if "--version" in sys.argv[1:]:  # before absl, which would first ask for required flags
    print(f"{prog} (cxr-edge) {__version__}")
    if about:
      print(about())
    sys.exit(0)
  for name in required:
    flag = flags.FLAGS[name]
    if "(required)" not in (flag.help or ""):
      flag.help = f"{flag.help} (required)"
  if not set(sys.argv[1:]) & _HELP_FLAGS:
    _check_flag_names(sys.argv, prog, job_module, pass_unknown)
  module = sys.modules[job_module]
  wrapper = sys.modules["__main__"]
  if wrapper is not module:
    # absl formats the docstring with %; the usage examples hold none, but be safe.
    wrapper.__doc__ = (module.__doc__ or "").replace("%", "%%")
    for flag in flags.FLAGS.get_flags_for_module(job_module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  def quiet_main(argv):
    _configure_logging()
    # Checked here, not by absl: its message is two FATAL lines and a pointer to help.
    missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
    if missing:
      sys.exit(f"{prog}: error: {' and '.join(missing)} "
               f"{'is' if len(missing) == 1 else 'are'} required (see {prog} --help)")
    try:
      return main(argv)
    except app.UsageError as e:  # absl would print the whole help first
      sys.exit(f"{prog}: error: {e} (see {prog} --help)")

  def parse_known(argv):
    try:
      return flags.FLAGS(argv, known_only=True)
    except flags.Error as e:  # as absl's own parser reports it, but in one line
      sys.exit(f"{prog}: error: {e}")

  try:
    if pass_unknown:
      app.run(quiet_main, flags_parser=parse_known)
    else:
      app.run(quiet_main)
  except KeyboardInterrupt:
    sys.stderr.write(f"\n{prog}: interrupted\n")
    sys.exit(130)
  except errors.CxrError as e:
    if verbose():
      raise
    sys.exit(f"{prog}: error: {e}")
  except OSError as e:
    if verbose():
      raise
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    sys.exit(f"{prog}: error: {e.strerror or e}{where}")
  except SystemExit as e:
    # absl exits 1 after printing asked-for help; asking for help is not a failure.
    if e.code == 1 and set(sys.argv[1:]) & _HELP_FLAGS:
      sys.exit(0)
    raise


# absl's own spellings that are not in FLAGS (help) or mean "the rest are arguments".
_ABSL_NAMES = {"help", "helpshort", "helpfull", "helpxml", "h", "?", "version"}


def _check_flag_names(argv: Sequence[str], prog: str, job_module: str,
                      pass_unknown: bool) -> None:
  """Ends the run in one line on a flag the job does not have, naming the nearest one.

  absl prints the whole help before "Unknown command line flag"; a flag spelled with
  hyphens (--input-dir) reached a job that hands unknown flags on (cxr-convert to Beam)
  and was silently ignored. A job that hands flags on is refused only what is close to
  one of its own.
  """
  names = set(flags.FLAGS)
  own = [f.name for f in flags.FLAGS.get_flags_for_module(job_module)] or sorted(names)
  args = list(argv[1:])
  i = 0
  while i < len(args):
    arg = args[i]
    i += 1
    if arg == "--":
      return
    if not arg.startswith("-") or arg == "-":
      continue
    name, has_value = arg.lstrip("-").split("=", 1)[0], "=" in arg
    if name in names:
      if not has_value and not flags.FLAGS[name].boolean:
        i += 1  # "--flag value": the value is next
      continue
    if name in _ABSL_NAMES or (name.startswith("no") and name[2:] in names
                               and flags.FLAGS[name[2:]].boolean):
      continue
    underscored = name.replace("-", "_")
    negated = underscored[3:] if underscored.startswith("no_") else None
    fixed = (underscored if underscored in names else
             f"no{negated}" if negated in names and flags.FLAGS[negated].boolean else None)
    if fixed:
      sys.exit(f"{prog}: error: --{name} is not a flag; did you mean --{fixed}? (flags are "
               "spelled with underscores)")
    nearest = (difflib.get_close_matches(underscored, own, n=1, cutoff=0.6)
               or difflib.get_close_matches(underscored, sorted(names), n=1, cutoff=0.75))
    if pass_unknown and not difflib.get_close_matches(underscored, own, n=1, cutoff=0.8):
      continue  # not ours, nor nearly: the job hands it on (and checks it there)
    sys.exit(f"{prog}: error: unknown flag --{name}"
             + (f"; did you mean --{nearest[0]}?" if nearest else f" (see {prog} --help)"))


def verbose() -> bool:
  """Whether the user asked for everything (--verbosity=1 or more)."""
  return logging.get_verbosity() >= logging.DEBUG


# Third-party warnings about features we do not use (Beam's optional BigQuery client).
_IRRELEVANT_WARNINGS = ("apitools not found",)


class _OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors from anywhere, INFO only from our packages."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if verbose():
      return True
    if record.levelno >= std_logging.WARNING:
      return not record.getMessage().startswith(_IRRELEVANT_WARNINGS)
    return record.pathname.startswith(_OUR_DIRS)


class _ShortFormatter(std_logging.Formatter):
  """"12:03:04 message" (and "WARNING: " or "ERROR: " before the message when it is one)."""

  def format(self, record: std_logging.LogRecord) -> str:
    level = "" if record.levelno < std_logging.WARNING else f"{record.levelname}: "
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      # The traceback is for --verbosity=1; the reason stays on the line.
      error = record.exc_info[1]
      reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      if reason not in message:
        message = f"{message} ({reason})"
    return f"{self.formatTime(record, '%H:%M:%S')} {level}{message}"


def _configure_logging() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())
  if not verbose():
    # absl's prefix (level, date, microseconds, thread id, file:line) is for debugging.
    handler.setFormatter(_ShortFormatter())
    # TensorFlow's C++ INFO/WARNING lines; read when TensorFlow loads, so set it now.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's own Python logger prints "INFO:tensorflow:Assets written to ...".
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    # Beam relays its SDK workers' start-up warnings; a failure still raises here.
    std_logging.getLogger("apache_beam").setLevel(std_logging.ERROR)


@contextlib.contextmanager
def native_stderr_quiet(enabled: bool = True) -> Iterator[None]:
  """Discards what C/C++ code writes to file descriptor 2 inside the block.

  Some native libraries print before any log level applies (CUDA probing at TensorFlow
  import, the TFLite converter's summary). Python exceptions still propagate; only
  their native chatter is lost, so use it around calls that are known to be noisy.
  """
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


@contextlib.contextmanager
def child_stderr_quiet(enabled: bool = True) -> Iterator[None]:
  """Processes started inside the block print nothing to stderr; this one still does.

  For jobs that start worker processes (a Beam runner's SDK workers) whose start-up
  and shutdown chatter would bury the job's own lines. Their errors still reach this
  process: the runner raises them here.
  """
  if not enabled:
    yield
    return
  sys.stderr.flush()
  ours = os.fdopen(os.dup(2), "w", buffering=1)
  handler = logging.get_absl_handler().python_handler
  saved_stream, saved_stderr = handler.stream, sys.stderr
  sys.stderr = ours
  if saved_stream is saved_stderr:
    handler.stream = ours
  with native_stderr_quiet():  # fd 2, which children inherit
    try:
      yield
    finally:
      sys.stderr.flush()
      handler.stream, sys.stderr = saved_stream, saved_stderr
      ours.close()


def import_tensorflow() -> Any:
  """Imports TensorFlow (once), without its CUDA-probing noise unless verbose()."""
  if sys.modules.get("tensorflow") is not None:
    return sys.modules["tensorflow"]
  quiet = not verbose()
  if quiet:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with native_stderr_quiet(quiet):
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError as e:  # the device install: cxr-edge[edge] has no TensorFlow
      raise errors.CxrError(
          f"this job needs TensorFlow, which this install lacks ({e.msg}): "
          "pip install 'cxr-edge[train]' (the device install, cxr-edge[edge], runs only "
          "cxr-predict and cxr-calibrate)") from None
    tf.config.list_physical_devices("GPU")  # a machine without CUDA says so here
  return tf


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
