"""Films that are not 8-bit JPEG/PNG: DICOM, 16-bit (or 12-bit-in-16) PNG, and TIFF.

Clinics store radiographs as DICOM, often 12 bits stored in 16, and export them as 16-bit
PNG or TIFF. TensorFlow's decoders and the model take 8-bit grayscale; decoding a 16-bit
file to 8 bits keeps the high byte, so 12-bit data comes out nearly black. Here such a
film becomes an 8-bit image the way a radiology viewer displays it:

  stored values -> modality LUT (rescale slope/intercept, or its LUT) -> VOI LUT, or the
  window centre/width, or else the full stored range -> MONOCHROME1 inverted -> 0..255

`window_to_uint8` is the one windowing function; every path (cxr-convert, cxr-evaluate
--image_dir, training's external scoring and the TensorFlow-free edge predictor) calls
`read_film`, which returns a lossless 8-bit PNG of the windowed image, so the rest of
the preprocessing is the one already shared and parity-tested. 8-bit JPEG and PNG pass
through unchanged (`needs_windowing` is False for them).

TensorFlow-free: numpy, Pillow, and pydicom (imported only for DICOM; python-gdcm and
pylibjpeg-openjpeg add the JPEG-LS and JPEG 2000 transfer syntaxes).
"""
import collections.abc
import contextlib
import dataclasses
import io
import logging as std_logging
import math
import struct
import warnings
import zlib
from typing import Any, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from cxr_edge.core.errors import FilmError, UnreadableImage

# Rejection reasons (prefixes; image_io's reasons cover the 8-bit formats).
REASON_DICOM_NO_PIXELS = "DICOM without pixel data"
REASON_DICOM_MODALITY = "DICOM modality is not a radiograph"
REASON_DICOM_FRAMES = "multi-frame DICOM"
REASON_DICOM_COLOUR = "colour DICOM"
REASON_DICOM_UNREADABLE = "unreadable DICOM"
REASON_DICOM_DECODE = "DICOM pixel data cannot be decoded"
REASON_DICOM_ATTRIBUTE = "invalid DICOM attribute"
REASON_HIGH_BIT_MODE = "unsupported high-bit-depth image"
# Why Pillow could not read a file (opened_image): the same words in cxr-convert's
# rejections, cxr-evaluate's skips and the edge predictor's errors.
REASON_NOT_IMAGE = "not an image"
REASON_BOMB = "decompression-bomb size"
REASON_CORRUPT = "truncated or corrupt image"

# Projection radiography (computed, digital, radiographic) and "other", which secondary
# captures of radiographs often carry. CT, MR, US... are not chest films.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT")


@contextlib.contextmanager
def opened_image(data: bytes) -> Iterator[Image.Image]:
  """Image.open on bytes, its many failure exceptions turned into one UnreadableImage.

  Covers what fails inside the block too (a full decode raises there on truncated data);
  other exceptions the block raises pass through unchanged.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      yield im
  except UnidentifiedImageError:
    raise UnreadableImage(REASON_NOT_IMAGE) from None
  except Image.DecompressionBombError as e:
    raise UnreadableImage(f"{REASON_BOMB}: {e}") from None
  except (OSError, SyntaxError, ValueError, EOFError, zlib.error, TypeError, IndexError,
          KeyError, struct.error) as e:
    # Pillow's decoders raise these on crafted headers (a TIFF without dimensions is a
    # TypeError); our own FilmError from the block is none of them and passes through.
    raise UnreadableImage(f"{REASON_CORRUPT}: {type(e).__name__}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Film:
  """A film ready for the shared preprocessing.

  Attributes:
    pixels: the windowed image, uint8 [height, width].
    source_format: "dicom", "png16" (16-bit PNG) or "tiff".
    patient_id: the DICOM PatientID tag, if any (never stored in clear: see cxr-convert).
  """
  pixels: np.ndarray
  source_format: str
  patient_id: Optional[str] = None

  @property
  def height(self) -> int:
    return int(self.pixels.shape[0])

  @property
  def width(self) -> int:
    return int(self.pixels.shape[1])

  @property
  def encoded(self) -> bytes:
    """The pixels as a lossless 8-bit grayscale PNG (what cxr-convert stores). Made only
    when asked: the edge runtime takes the pixels themselves, which decoding this PNG
    would give back exactly."""
    out = io.BytesIO()
    Image.fromarray(self.pixels, "L").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def is_dicom(data: bytes) -> bool:
  """DICOM Part 10 files carry "DICM" after a 128-byte preamble."""
  return len(data) >= 132 and data[128:132] == b"DICM"


def needs_windowing(data: bytes) -> bool:
  """True for DICOM, TIFF and high-bit-depth PNG: what read_film must turn into 8 bits."""
  if is_dicom(data):
    return True
  try:
    with opened_image(data) as im:  # header only
      return im.format == "TIFF" or (im.format == "PNG" and im.mode.startswith("I"))
  except UnreadableImage:
    return False


def window_to_uint8(values: np.ndarray, low: float, high: float,
                    invert: bool = False) -> np.ndarray:
  """Maps [low, high] linearly onto 0..255 (clipped, rounded), then inverts if asked.

  DICOM's linear window (PS3.3 C.11.2.1.2) with centre c and width w is low =
  c - 0.5 - (w - 1) / 2, high = c - 0.5 + (w - 1) / 2 (see `window_bounds`).

  Args:
    values: pixel values after the modality LUT (any real dtype).
    low, high: the values shown as black and white (before inversion); high > low.
    invert: MONOCHROME1 (low values are white).

  Returns:
    uint8 array of the same shape.
  """
  if not high > low:
    raise ValueError(f"empty window [{low}, {high}]")
  scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low))
  out = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
  return 255 - out if invert else out


def window_bounds(center: float, width: float) -> Tuple[float, float]:
  """(low, high) of DICOM's linear window with this centre and width."""
  return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def read_film(data: bytes, max_pixels: Optional[int] = None) -> Film:
  """A DICOM, TIFF or high-bit-depth PNG file -> its windowed 8-bit Film.

  Args:
    data: the file's bytes.
    max_pixels: larger films are refused before their pixels are decoded (None: any).

  Raises:
    FilmError: not a single-frame grayscale radiograph, or undecodable; the message
      starts with a REASON_* prefix.
  """
  if is_dicom(data):
    pixels, patient_id = _dicom_pixels(data, max_pixels)
    return _film(pixels, "dicom", patient_id)
  try:
    with opened_image(data) as im:
      if max_pixels and im.size[0] * im.size[1] > max_pixels:
        raise FilmError(f"{REASON_BOMB}: {im.size[0]}x{im.size[1]} exceeds "
                        f"{max_pixels} pixels")
      source = "tiff" if im.format == "TIFF" else "png16"
      if getattr(im, "n_frames", 1) > 1:
        raise FilmError(f"{REASON_HIGH_BIT_MODE}: {im.n_frames} frames")
      im.load()
      if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(im).astype(np.int64)
        low, high = _stored_range(values, None)
        # A TIFF stored WhiteIsZero (PhotometricInterpretation 0) shows its low values
        # white, like MONOCHROME1; Pillow inverts 8-bit ones itself, not 16-bit ones.
        white_is_zero = im.format == "TIFF" and im.tag_v2.get(262) == 0
        return _film(window_to_uint8(values, low, high, invert=white_is_zero), source)
      if im.mode in ("L", "RGB", "P", "LA", "RGBA", "1"):  # 8-bit TIFF: as Pillow shows it
        return _film(np.asarray(im.convert("L"), np.uint8), source)
      raise FilmError(f"{REASON_HIGH_BIT_MODE}: {im.format} mode {im.mode}")
  except UnreadableImage as e:
    raise FilmError(str(e)) from None


def as_8bit(data: bytes, max_pixels: Optional[int] = None) -> bytes:
  """A file's bytes as the shared preprocessing takes them: DICOM, TIFF and 16-bit PNG
  windowed to an 8-bit PNG (read_film), 8-bit JPEG/PNG unchanged.

  Raises:
    FilmError: a film that needs windowing but cannot be read.
  """
  return read_film(data, max_pixels).encoded if needs_windowing(data) else data


def _film(pixels: np.ndarray, source: str, patient_id: Optional[str] = None) -> Film:
  return Film(np.ascontiguousarray(pixels, np.uint8), source, patient_id)


# The share of pixels the stored-range window may clip (see _stored_range).
_STRAY_PIXELS = 0.9999


def _stored_range(values: np.ndarray, bits_stored: Optional[int],
                  signed: bool = False) -> Tuple[int, int]:
  """The range the stored values can take: from BitsStored, else the smallest bit depth
  (at least 8) that holds the data (12-bit-in-16 PNG -> 0..4095).

  "Holds the data" leaves out the brightest 1 in 10,000 pixels: one stray pixel at 65535
  in 12-bit data (a burnt-in marker, a bad detector pixel) would otherwise set a 16-bit
  window and leave the film 16 grey levels; it is clipped to white instead.
  """
  if bits_stored is None:
    typical = int(np.quantile(values, _STRAY_PIXELS, method="higher"))
    bits_stored = max(8, max(typical, 1).bit_length())
  if signed:
    return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
  return 0, (1 << bits_stored) - 1


def _dicom_pixels(data: bytes, max_pixels: Optional[int]) -> Tuple[np.ndarray, Optional[str]]:
  """Windowed uint8 pixels and PatientID of a single-frame grayscale DICOM radiograph."""
  # pylint: disable=g-import-not-at-top
  import pydicom
  # pylint: enable=g-import-not-at-top
  # pydicom logs each decoder plugin's failure as an ERROR before it raises; the
  # FilmError below carries the reason, once.
  std_logging.getLogger("pydicom").setLevel(std_logging.CRITICAL)
  if max_pixels:
    _refuse_deflate_bomb(data, max_pixels)
  try:
    with warnings.catch_warnings():  # pydicom warns as it reads what it can: reasons below
      warnings.simplefilter("ignore")
      ds = pydicom.dcmread(io.BytesIO(data))
  except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
    raise FilmError(f"{REASON_DICOM_UNREADABLE}: {type(e).__name__}: {e}") from None
  try:
    with warnings.catch_warnings():  # a malformed value warns as it is read: our error says it
      warnings.simplefilter("ignore")
      return _dicom_film(ds, max_pixels)
  except FilmError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # pydicom parses elements when they are first read: a malformed one (an unknown VR,
    # a UID that is no transfer syntax) raises there, whatever the access. It is this
    # film's error, never the job's.
    raise FilmError(f"{REASON_DICOM_UNREADABLE}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None


def _dicom_film(ds: Any, max_pixels: Optional[int]) -> Tuple[np.ndarray, Optional[str]]:
  """_dicom_pixels once the dataset is parsed (its elements lazily)."""
  # pylint: disable=g-import-not-at-top
  from pydicom import pixels as dicom_pixels
  # pylint: enable=g-import-not-at-top
  syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
  if syntax is None:  # pydicom reads what it can; a Part 10 file always names its syntax
    raise FilmError(f"{REASON_DICOM_UNREADABLE}: no transfer syntax in its file meta "
                    "(truncated, or not a DICOM Part 10 file)")
  if "PixelData" not in ds:
    raise FilmError(f"{REASON_DICOM_NO_PIXELS} ({ds.get('SOPClassUID', 'unknown SOP class')})")
  modality = str(ds.get("Modality", "")).upper()
  if modality not in RADIOGRAPH_MODALITIES:
    raise FilmError(f"{REASON_DICOM_MODALITY}: {modality or 'none'} (accepted: "
                    f"{', '.join(RADIOGRAPH_MODALITIES)})")
  attributes = _attributes(ds)
  if attributes.frames > 1:
    raise FilmError(f"{REASON_DICOM_FRAMES}: {attributes.frames} frames")
  if attributes.samples != 1 or attributes.photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise FilmError(f"{REASON_DICOM_COLOUR}: {attributes.photometric} with "
                    f"{attributes.samples} samples per pixel")
  if max_pixels and attributes.rows * attributes.columns > max_pixels:
    raise FilmError(f"decompression-bomb size: {attributes.columns}x{attributes.rows} "
                    f"exceeds {max_pixels} pixels")
  if getattr(syntax, "is_compressed", False):
    _refuse_frame_larger_than_declared(ds, attributes)
    _refuse_without_decoder(syntax)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      stored = ds.pixel_array
  except Exception as e:  # pylint: disable=broad-except  # decoder plugins raise many kinds
    raise FilmError(f"{REASON_DICOM_DECODE} ({getattr(syntax, 'name', syntax)}): "
                    f"{str(e).splitlines()[0][:200]}") from None
  if stored.ndim != 2:
    raise FilmError(f"{REASON_DICOM_FRAMES}: pixel array of shape {stored.shape}")
  try:
    values = _window(stored, ds, attributes, dicom_pixels)
  except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as e:
    # What _attributes admits should window; a pydicom corner it did not foresee is
    # still this film's error, never the job's.
    raise FilmError(f"{REASON_DICOM_ATTRIBUTE}: windowing failed "
                    f"({type(e).__name__}: {str(e)[:120]})") from None
  patient = ds.get("PatientID")
  return values, (str(patient).strip() or None) if patient is not None else None


# What a site installs to read compressed films. The decoders are optional: a site
# whose films are uncompressed needs none, and a platform without their wheels can still
# install cxr-edge (setup.cfg's `dicom` extra).
DECODERS_EXTRA = "pip install 'cxr-edge[dicom]' (python-gdcm, pylibjpeg, pylibjpeg-openjpeg)"


def _refuse_without_decoder(syntax: Any) -> None:
  """A compressed film that no installed library decodes: its error names what to
  install, instead of pydicom's long list of plugins."""
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top
  name = getattr(syntax, "name", syntax)
  try:
    available = get_decoder(syntax).is_available
  except NotImplementedError:  # pydicom knows no decoder at all (video, JPEG XL...)
    raise FilmError(f"{REASON_DICOM_DECODE} ({name}): no decoder exists for this "
                    "transfer syntax; ask the sender for an uncompressed or JPEG 2000 "
                    "film") from None
  if not available:
    raise FilmError(f"{REASON_DICOM_DECODE} ({name}): no decoder for it is installed; "
                    f"{DECODERS_EXTRA}")


# The largest a film's dataset may inflate to, per pixel the limit allows: 16-bit pixels
# and their headers. Beyond it a deflated file is refused before it is inflated.
_INFLATED_BYTES_PER_PIXEL = 2
_INFLATED_HEADER_BYTES = 1 << 20
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _refuse_deflate_bomb(data: bytes, max_pixels: int) -> None:
  """A Deflated-syntax DICOM is inflated in chunks, output discarded, to measure it: one
  that would inflate past what max_pixels allows is refused before pydicom inflates it
  whole (1.5 MB of such a file reached 3 GB of memory)."""
  fp = io.BytesIO(data)
  try:
    _, syntax = _file_meta(fp)
  except Exception:  # pylint: disable=broad-except  # dcmread reports it properly next
    return
  if syntax != _DEFLATED:
    return
  limit = max_pixels * _INFLATED_BYTES_PER_PIXEL + _INFLATED_HEADER_BYTES
  inflater = zlib.decompressobj(-zlib.MAX_WBITS)
  pending, total = data[fp.tell():], 0
  try:
    while pending and total <= limit:
      total += len(inflater.decompress(pending, 1 << 20))
      pending = inflater.unconsumed_tail
  except zlib.error as e:
    raise FilmError(f"{REASON_DICOM_UNREADABLE}: deflated data is corrupt ({e})") from None
  if total > limit:
    raise FilmError(f"{REASON_BOMB}: deflated DICOM inflates past {limit} bytes "
                    f"(the limit for {max_pixels} pixels)")


def _file_meta(fp: Any) -> Tuple[Any, Any]:
  """A Part 10 file's preamble read past and its file meta: (meta, its transfer syntax
  UID, empty where none is named); `fp` is left at the dataset's start.

  Raises:
    whatever pydicom raises on a malformed preamble or meta.
  """
  # pylint: disable=g-import-not-at-top,protected-access
  from pydicom import filereader
  from pydicom import uid as dicom_uid
  filereader.read_preamble(fp, False)
  meta = filereader._read_file_meta_info(fp)
  # pylint: enable=g-import-not-at-top,protected-access
  return meta, dicom_uid.UID(str(meta.get("TransferSyntaxUID", "")))  # parsed lazily here


# A deflated film's header is inflated at most this far (headers are kilobytes).
HEADER_MAX_INFLATED_BYTES = 4 << 20


def dicom_header(fp: Any, defer_size: Optional[int] = None) -> Tuple[Any, bool]:
  """A DICOM Part 10 file's header, and whether pixel data follows it, without the pixels.

  The dataset is read up to its pixel data; a Deflated-syntax one is inflated only that
  far (at most HEADER_MAX_INFLATED_BYTES), where pydicom would inflate all of it first:
  a 1 MB deflate bomb took a receiver to 2 GB before any check.

  Args:
    fp: a binary file object at the file's start.
    defer_size: values longer than this are left unread (pydicom's defer_size).

  Returns:
    (the dataset with its file_meta, True if pixel data follows the header).

  Raises:
    whatever pydicom raises on a malformed file.
  """
  from pydicom import filereader  # pylint: disable=g-import-not-at-top
  meta, syntax = _file_meta(fp)
  if syntax == _DEFLATED:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    while len(inflated) < HEADER_MAX_INFLATED_BYTES:
      chunk = fp.read(1 << 16)
      if not chunk:
        break
      inflated += inflater.decompress(chunk, HEADER_MAX_INFLATED_BYTES - len(inflated))
      if inflater.unconsumed_tail:  # the limit is reached: the rest is pixels
        break
    stream, implicit, little = io.BytesIO(bytes(inflated)), False, True
  elif syntax.is_transfer_syntax:
    stream, implicit, little = fp, syntax.is_implicit_VR, syntax.is_little_endian
  else:  # no or an unknown syntax: as pydicom reads one, explicit VR little endian
    stream, implicit, little = fp, False, True
  at_pixels = []

  def stop(tag, vr, length) -> bool:
    del vr, length
    if tag in (0x7FE00010, 0x7FE00009, 0x7FE00008):
      at_pixels.append(tag)
      return True
    return False

  with warnings.catch_warnings():  # a truncated header warns; what was read is returned
    warnings.simplefilter("ignore")
    ds = filereader.read_dataset(stream, implicit, little, stop_when=stop,
                                 defer_size=defer_size)
  ds.file_meta = meta
  return ds, bool(at_pixels)


def _encoded_size(frame: bytes) -> Optional[Tuple[int, int]]:
  """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None."""
  j2k = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
  if j2k >= 0 and len(frame) >= j2k + 24:
    x, y, x0, y0 = (int.from_bytes(frame[j2k + 8 + 4 * i:j2k + 12 + 4 * i], "big")
                    for i in range(4))
    return y - y0, x - x0
  i = frame.find(b"\xff\xd8")
  if i < 0:
    return None
  i += 2
  while i + 9 <= len(frame):
    if frame[i] != 0xFF:
      return None
    marker = frame[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    length = int.from_bytes(frame[i + 2:i + 4], "big")
    # Start of frame (not DHT C4, JPG C8, DAC CC), or JPEG-LS's SOF55 (F7).
    if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
      return (int.from_bytes(frame[i + 5:i + 7], "big"),
              int.from_bytes(frame[i + 7:i + 9], "big"))
    i += 2 + length
  return None


def _refuse_frame_larger_than_declared(ds: Any, attributes: "_DicomAttributes") -> None:
  """An encapsulated frame declaring more pixels than Rows x Columns is refused from its
  header, before a decoder allocates for it (a 2 KB file took 570 MB)."""
  from pydicom import encaps  # pylint: disable=g-import-not-at-top
  try:
    frame = next(encaps.generate_frames(ds.PixelData, number_of_frames=1))
  except Exception:  # pylint: disable=broad-except  # the decoder reports it properly
    return
  size = _encoded_size(frame[:1 << 16])
  if size is not None and size[0] * size[1] > attributes.rows * attributes.columns:
    raise FilmError(f"{REASON_BOMB}: its compressed frame is {size[1]}x{size[0]}, larger "
                    f"than the {attributes.columns}x{attributes.rows} it declares")


@dataclasses.dataclass(frozen=True)
class _DicomAttributes:
  """Every attribute the reader uses, read and checked once (_attributes)."""
  frames: int
  samples: int
  photometric: str
  rows: int
  columns: int
  bits_stored: Optional[int]
  signed: bool
  window: Optional[Tuple[float, float]]  # (centre, width) of the first window, if usable
  voi_lut_bits: Optional[int]  # the VOI LUT's output bits, when it has a usable one


def _attribute_error(name: str, value: Any, why: str) -> FilmError:
  shown = repr(value)
  return FilmError(f"{REASON_DICOM_ATTRIBUTE}: {name} {shown[:60]} ({why})")


def _number(ds: Any, name: str, kind: type, default: Any) -> Any:
  """ds's attribute `name` as a finite int or float; `default` when absent or empty."""
  try:  # pydicom converts a value when it is first read: a malformed one raises here
    value = ds.get(name, None)
  except (ValueError, TypeError, OverflowError) as e:
    raise _attribute_error(name, str(e)[:40], "cannot be read") from None
  if value is None or value == "":
    return default
  try:
    # Several values (pydicom's MultiValue, a mutable sequence): the first is the default.
    first = value[0] if isinstance(value, (tuple, collections.abc.MutableSequence)) else value
    number = float(first)
  except (TypeError, ValueError, IndexError):
    raise _attribute_error(name, value, "not a number") from None
  if not math.isfinite(number):
    raise _attribute_error(name, value, "not finite")
  if kind is int:
    if number != int(number):
      raise _attribute_error(name, value, "not a whole number")
    return int(number)
  return number


def _attributes(ds: Any) -> _DicomAttributes:
  """Reads and checks what the reader uses: a malformed value is this film's FilmError,
  naming the attribute; a legal one is kept even where it is unusual (width 1)."""
  if "PhotometricInterpretation" not in ds or not str(ds.PhotometricInterpretation).strip():
    raise FilmError(f"{REASON_DICOM_ATTRIBUTE}: missing PhotometricInterpretation")
  frames = _number(ds, "NumberOfFrames", int, 1)
  samples = _number(ds, "SamplesPerPixel", int, 1)
  rows, columns = _number(ds, "Rows", int, 0), _number(ds, "Columns", int, 0)
  if rows <= 0 or columns <= 0:
    raise _attribute_error("Rows x Columns", (rows, columns), "not a positive size")
  bits = _number(ds, "BitsStored", int, None)
  if bits is not None and not 1 <= bits <= 32:
    raise _attribute_error("BitsStored", bits, "not 1 to 32")
  slope = _number(ds, "RescaleSlope", float, 1.0)
  _number(ds, "RescaleIntercept", float, 0.0)
  if slope == 0:
    raise _attribute_error("RescaleSlope", slope, "zero maps every pixel to one value")
  window = None
  if "WindowCenter" in ds and "WindowWidth" in ds:
    center = _number(ds, "WindowCenter", float, None)
    width = _number(ds, "WindowWidth", float, None)
    if center is not None and width is not None and width >= 1:  # PS3.3: width >= 1
      window = (center, width)
  voi_lut_bits = None
  if "VOILUTSequence" in ds:
    items = ds.VOILUTSequence
    item = items[0] if len(items) else None
    descriptor = getattr(item, "LUTDescriptor", None) if item is not None else None
    data = getattr(item, "LUTData", None) if item is not None else None
    if descriptor is None or len(descriptor) != 3 or data is None or not len(data):
      raise FilmError(f"{REASON_DICOM_ATTRIBUTE}: VOILUTSequence without a usable LUT "
                      "(empty, or no LUTDescriptor or LUTData)")
    voi_lut_bits = int(descriptor[2])
    if not 1 <= voi_lut_bits <= 16:
      raise _attribute_error("LUTDescriptor bits", voi_lut_bits, "not 1 to 16")
  return _DicomAttributes(
      frames=frames, samples=samples,
      photometric=str(ds.PhotometricInterpretation).strip().upper(), rows=rows,
      columns=columns, bits_stored=bits,
      signed=_number(ds, "PixelRepresentation", int, 0) == 1, window=window,
      voi_lut_bits=voi_lut_bits)


def _window(stored: np.ndarray, ds: Any, attributes: _DicomAttributes,
            dicom_pixels: Any) -> np.ndarray:
  """Modality LUT, then VOI LUT / window / full stored range, then MONOCHROME1."""
  invert = attributes.photometric == "MONOCHROME1"
  values = dicom_pixels.apply_modality_lut(stored, ds)
  if not np.all(np.isfinite(values)):
    raise FilmError(f"{REASON_DICOM_ATTRIBUTE}: the rescale makes pixel values that are not "
                    "finite")
  if attributes.voi_lut_bits is not None:
    # A non-linear VOI LUT: pydicom applies it; its output spans 0 .. 2^bits - 1.
    values = dicom_pixels.apply_voi_lut(values, ds, prefer_lut=True)
    return window_to_uint8(values, 0, (1 << attributes.voi_lut_bits) - 1, invert)
  if attributes.window is not None:
    center, width = attributes.window
    if width == 1:  # PS3.3 C.11.2.1.2: a pure threshold at c - 0.5
      out = np.where(np.asarray(values, np.float64) > center - 0.5, 255, 0).astype(np.uint8)
      return 255 - out if invert else out
    return window_to_uint8(values, *window_bounds(center, width), invert)
  bits = attributes.bits_stored or stored.dtype.itemsize * 8
  low, high = _stored_range(stored, bits, signed=attributes.signed)
  ends = dicom_pixels.apply_modality_lut(np.array([low, high]), ds).astype(np.float64)
  return window_to_uint8(values, float(ends.min()), float(ends.max()), invert)
