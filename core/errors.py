"""Every error cxr-edge raises for a problem the user can act on, under one base class.

`cli.run` turns any `CxrError` that reaches a job's top into one line,
`cxr-x: error: <message>`, and exit status 1 (`--verbosity=1` keeps the traceback).
The message is written for the person at the command line: it names the flag, file or
field and says what is wrong, so a job never needs to catch these only to reword them.
"""


class CxrError(Exception):
  """A problem with the input, the output or a model that the user can fix."""


class ConfigError(CxrError, ValueError):
  """An argument or configuration that cannot work (a ValueError too, for callers)."""


class MissingInputError(CxrError, FileNotFoundError):
  """An input that is missing or incomplete (a FileNotFoundError too, for callers)."""


class ConversionError(CxrError):
  """An input folder, file list or output folder cannot be used; the message says why."""


class VerificationError(CxrError):
  """The first problem found in a conversion output."""


class CorruptDataError(CxrError):
  """A record could not be read or decoded; the message names the shard and record."""


class FilmError(CxrError):
  """A file that is not a usable film; str(e) starts with one of film's REASON_* texts."""


class UnreadableImage(CxrError):
  """Pillow cannot read the bytes; str(e) starts with REASON_NOT_IMAGE, _BOMB or _CORRUPT."""


class ModelError(CxrError):
  """The model or its metadata cannot be used; nothing was predicted."""


class PackageError(ModelError):
  """The model file or its embedded metadata cannot be used; the message says why."""


class ImageError(CxrError):
  """One input image cannot be read."""


class OutOfScope(ImageError):
  """A film outside the model's intended use: it gets no finding; str(e) says why."""


class CalibrationError(CxrError):
  """The films or the output cannot be used for calibration; nothing was written."""
