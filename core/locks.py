"""One job at a time in a folder: a second copy of cxr-convert or cxr-train is refused.

The lock is on the folder itself (flock on its directory handle), so there is no lock
file to leave behind, to count as content, or to clean up after a kill -9: the kernel
releases it when the process ends, however it ends. Where flock does not exist
(Windows) the folder is not locked.
"""
import contextlib
import os
from typing import Iterator

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Windows
  fcntl = None

from cxr_edge.core import errors


@contextlib.contextmanager
def exclusive(folder: str, job: str, flag: str) -> Iterator[None]:
  """Creates `folder` if need be and holds it exclusively for the block.

  Args:
    folder: the job's output folder.
    job: the command's name, for the message.
    flag: the flag that named the folder, for the message.

  Raises:
    errors.CxrError: folder is a file, or another process holds it (a second copy of a
      job writing there).
  """
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.CxrError(f"{flag} {folder!r} exists and is not a directory")
  os.makedirs(folder, exist_ok=True)
  fd = os.open(folder, os.O_RDONLY)
  try:
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise errors.CxrError(
            f"{flag} {folder!r} is in use by another process (a second {job} writing "
            "there); wait for it to finish, or choose another folder") from None
    yield
  finally:
    os.close(fd)
