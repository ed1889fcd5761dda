"""Reading, validating and (optionally) re-encoding source images with Pillow.

These functions run in the conversion job's worker processes. They import only the
standard library and Pillow, never TensorFlow, so that spawning a worker is cheap and
does not copy TensorFlow's thread pools into a forked child.
"""
import dataclasses
import hashlib
import io
import os
import stat
import struct
import zlib
from typing import Optional, Tuple, Union

from PIL import Image

from cxr_edge.core import film
from cxr_edge.core import schema

# Pillow mode -> channels TensorFlow decodes (channels=0) for the stored bytes.
_JPEG_MODES = {"L": 1, "RGB": 3}
_PNG_MODES = {"1": 1, "L": 1, "I;16": 1, "I;16B": 1, "I": 1, "LA": 2, "P": 3, "RGB": 3, "RGBA": 4}

# Rejection reasons (the manifest and tests use these prefixes).
REASON_EMPTY = "empty file"
REASON_NOT_IMAGE = film.REASON_NOT_IMAGE
REASON_CORRUPT = film.REASON_CORRUPT
REASON_FORMAT = "unsupported format"
REASON_MODE = "unsupported colour mode"
REASON_BOMB = film.REASON_BOMB
REASON_UNKNOWN_CLASS = "unknown class folder"
REASON_UNREADABLE = "unreadable file"
REASON_CONFLICT = "conflicting labels"
REASON_CHANGED = "changed or removed during conversion"
REASON_NAME = "file name is not valid UTF-8"
REASON_FOLDER = "unreadable folder"
REASON_LOOP = "folder already scanned (symbolic link)"
REASON_NOT_REGULAR = "not a regular file"
REASON_ROTATED = "stored rotated"
REASON_TOO_LARGE = "file too large"
REASON_NOT_LISTED = "not listed in --metadata_csv"
REASON_LISTED_MISSING = "listed in --metadata_csv but not found"


def exif_orientation(im: Image.Image) -> int:
  """The EXIF orientation an image carries (1: stored upright, also when it has none).

  Every reader here (TensorFlow's decoder in training and in the SavedModel, the device)
  takes the pixels as stored, so a film stored sideways with an orientation tag, upright
  in every viewer, would reach the model sideways. It is refused by conversion and warned
  (refused with --strict) on the device rather than honoured in one place and not another.
  """
  try:
    return int(im.getexif().get(0x0112, 1) or 1)
  except (ValueError, TypeError, OSError, SyntaxError):
    return 1


def orientation_of(data: bytes) -> int:
  """exif_orientation of an image's bytes (1 for what Pillow cannot open: DICOM, ...)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      return exif_orientation(im)
  except (OSError, ValueError, SyntaxError, TypeError):
    return 1


def rotated_reason(orientation: int) -> str:
  return (f"{REASON_ROTATED} (EXIF orientation {orientation}): the model sees the pixels as "
          "stored, not upright as viewers show them; rotate it upright first")


def _modes(fmt: str) -> dict:
  """The Pillow modes read in a stored format ("jpeg" or "png"), with their channels."""
  return _JPEG_MODES if fmt == "jpeg" else _PNG_MODES


def supported_mode(fmt: str, mode: str) -> bool:
  """Whether an 8-bit JPEG or PNG in this Pillow mode is read (the one verdict of
  conversion, training's decoder and the device): CMYK JPEG, for one, is not."""
  return mode in _modes(fmt)


def _channels(fmt: str, im: Image.Image) -> int:
  """Channels TensorFlow decodes (channels=0) from stored bytes of this format and mode."""
  if im.mode == "P" and "transparency" in im.info:
    return 4
  return _modes(fmt)[im.mode]


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """What the first pass learns about one accepted source file."""
  sha256: str
  size_bytes: int
  format: str  # what is stored: "jpeg" or "png"
  height: int
  width: int
  channels: int
  source_format: str = ""  # "dicom", "png16", "tiff" when windowed to 8 bits; else format
  patient_tag: Optional[str] = None  # DICOM PatientID, to be hashed, never stored in clear


@dataclasses.dataclass(frozen=True)
class Rejection:
  """Why a source file was not converted."""
  reason: str


def inspect_image(path: str, max_pixels: int = schema.MAX_PIXELS) -> Union[ImageInfo, Rejection]:
  """Hashes and fully decodes one file to decide whether it can be converted.

  Args:
    path: the file to read.
    max_pixels: images with more pixels than this are refused before decoding, so a
      crafted file cannot exhaust memory.

  Returns:
    An ImageInfo for a readable 8-bit JPEG/PNG in a supported mode, or for a DICOM,
    TIFF or high-bit-depth PNG that core/film.py windows to 8 bits; else a Rejection
    whose reason starts with one of the REASON_* constants (or film's).
  """
  try:
    data = read_file(path)
  except UnreadableFile as e:
    return Rejection(str(e))
  return inspect_data(data, max_pixels)


def inspect_data(data: bytes, max_pixels: int = schema.MAX_PIXELS) -> Union[ImageInfo, Rejection]:
  """inspect_image on a file's bytes, however they were read (a Beam worker's FileSystems)."""
  if not data:
    return Rejection(REASON_EMPTY)
  sha = hashlib.sha256(data).hexdigest()
  problem = png_chunk_problem(data)
  if problem:
    return Rejection(f"{REASON_CORRUPT}: {problem}")
  if film.needs_windowing(data):
    try:
      f = film.read_film(data, max_pixels)
    except film.FilmError as e:
      return Rejection(str(e))
    return ImageInfo(sha256=sha, size_bytes=len(data), format="png", height=f.height,
                     width=f.width, channels=1, source_format=f.source_format,
                     patient_tag=f.patient_id)
  result = _decode_check(data, max_pixels)
  if isinstance(result, Rejection):
    return result
  fmt, height, width, channels = result
  return ImageInfo(sha256=sha, size_bytes=len(data), format=fmt, height=height, width=width,
                   channels=channels, source_format=fmt)


def _decode_check(data: bytes, max_pixels: int) -> Union[Tuple[str, int, int, int], Rejection]:
  """Returns (format, height, width, channels) of fully decodable bytes, or a Rejection."""
  try:
    # Our own limit replaces Pillow's global one, which only warns below 2x its value.
    with film.opened_image(data) as im:
      fmt = schema.IMAGE_FORMATS.get(im.format or "")
      if fmt is None:
        return Rejection(f"{REASON_FORMAT}: {im.format}")
      if not supported_mode(fmt, im.mode):
        return Rejection(f"{REASON_MODE}: {im.mode}")
      orientation = exif_orientation(im)
      if orientation != 1:
        return Rejection(rotated_reason(orientation))
      width, height = im.size
      if width * height > max_pixels:
        return Rejection(f"{REASON_BOMB}: {width}x{height} exceeds {max_pixels} pixels")
      channels = _channels(fmt, im)
      im.load()  # Full decode: raises on truncated or corrupt data.
  except film.UnreadableImage as e:
    return Rejection(str(e))
  return fmt, height, width, channels


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk_problem(data: bytes) -> Optional[str]:
  """What libpng (TensorFlow's PNG decoder) would refuse in a PNG's chunk structure.

  Pillow decodes the pixels without checking the IDAT chunks' CRCs or looking for IEND,
  so a damaged PNG used to convert and then stop training with "Invalid PNG data". Here
  every critical chunk's CRC is checked and IEND must end the image, as libpng demands.

  Args:
    data: a file's bytes; anything that is not a PNG passes (None).

  Returns:
    None for a sound chunk structure, else a short description of the first problem.
  """
  if not data.startswith(_PNG_SIGNATURE):
    return None
  pos = len(_PNG_SIGNATURE)
  while True:
    if pos + 8 > len(data):
      return "PNG ends without an IEND chunk"
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    end = pos + 8 + length + 4
    if end > len(data):
      return f"PNG chunk {kind.decode('latin-1')!r} is truncated"
    crc = struct.unpack(">I", data[end - 4:end])[0]
    critical = not kind[0] & 0x20  # upper-case first letter
    if critical and zlib.crc32(data[pos + 4:end - 4]) != crc:
      return f"PNG chunk {kind.decode('latin-1')!r} fails its CRC check"
    if kind == b"IEND":
      return None
    pos = end


def load_encoded(path: str, expected_sha256: str, fmt: str,
                 max_side: Optional[int]) -> Union[Tuple[bytes, int, int, int], Rejection]:
  """Reads a file accepted by inspect_image and returns the bytes to store.

  Args:
    path: the source file.
    expected_sha256: its hash from the first pass; a file that changed or vanished
      since then is rejected (its new content was never checked, and storing it would
      silently break determinism).
    fmt: "jpeg" or "png", as inspect_image found.
    max_side: if set and the longer side exceeds it, the image is downscaled to that
      (aspect ratio kept) and re-encoded in its own format; otherwise the source bytes
      are stored unchanged.

  Returns:
    (encoded bytes, height, width, channels) of what is stored, or a Rejection
    (REASON_CHANGED) when the file is no longer what inspect_image accepted.
  """
  try:
    data = read_file(path)
  except UnreadableFile as e:
    return Rejection(f"{REASON_CHANGED}: {e}")
  return encoded_from_data(data, expected_sha256, fmt, max_side)


def encoded_from_data(data: bytes, expected_sha256: str, fmt: str, max_side: Optional[int]
                      ) -> Union[Tuple[bytes, int, int, int], Rejection]:
  """load_encoded on a file's bytes, however they were read."""
  if hashlib.sha256(data).hexdigest() != expected_sha256:
    return Rejection(f"{REASON_CHANGED}: its content differs from the first pass")
  data = film.as_8bit(data)  # DICOM etc. stored as the windowed 8-bit PNG; size checked
  with Image.open(io.BytesIO(data)) as im:
    width, height = im.size
    if not max_side or max(width, height) <= max_side:
      return data, height, width, _channels(fmt, im)
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if im.mode.startswith("I"):
      # 16-bit grayscale: scale to 8 bits (Pillow's plain convert would clip).
      im = im.convert("I").point(lambda v: v * (1 / 256))
    im = im.convert(_reencode_mode(im.mode, fmt))
    im = im.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if fmt == "jpeg":
      im.save(out, format="JPEG", quality=95)
    else:
      im.save(out, format="PNG", optimize=False)
    return out.getvalue(), size[1], size[0], {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[im.mode]


def _reencode_mode(mode: str, fmt: str) -> str:
  """A mode Pillow can resize and encode in `fmt` without losing channels we use."""
  if fmt == "jpeg" or mode in ("L", "RGB"):
    return mode if mode in ("L", "RGB") else "L"
  if mode == "1" or mode.startswith("I"):
    return "L"
  if mode == "P":
    return "RGBA"
  return mode  # LA, RGBA


class UnreadableFile(Exception):
  """A path read_file will not or cannot read; str(e) is the reason, one of ours."""


def read_file(path: str, max_bytes: int = schema.MAX_FILE_BYTES) -> bytes:
  """The bytes of a regular file of at most max_bytes: every film is read through here.

  A FIFO or device named like a film (x.png -> /dev/zero) would block or never end: it is
  refused after opening without blocking, by what the open file is (no race with a
  rename). A longer file is refused unread, and the read is bounded even if it grows.

  Raises:
    UnreadableFile: with REASON_NOT_REGULAR, REASON_TOO_LARGE or REASON_UNREADABLE.
  """
  try:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  except OSError as e:
    raise UnreadableFile(f"{REASON_UNREADABLE}: {e.strerror or e}") from None
  kind = os.fstat(fd).st_mode
  if not stat.S_ISREG(kind):
    os.close(fd)
    raise UnreadableFile(f"{REASON_NOT_REGULAR} ({_kind(kind)})")
  with os.fdopen(fd, "rb") as f:
    try:
      data = f.read(max_bytes + 1)
    except OSError as e:
      raise UnreadableFile(f"{REASON_UNREADABLE}: {e.strerror or e}") from None
  if len(data) > max_bytes:
    raise UnreadableFile(f"{REASON_TOO_LARGE}: over {max_bytes // (1024 * 1024)} MiB")
  return data


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                     (stat.S_ISSOCK, "a socket")):
    if test(mode):
      return name
  return "not a file"


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
