"""core/film.py: DICOM, 16-bit PNG and TIFF windowed to 8 bits; each rejection."""
import io

import numpy as np
import pytest
from PIL import Image

from cxr_edge.core import film
from cxr_edge.core import image_io
from tests import dicom_files
from tests.conftest import dicom_bytes, film_pixels, write_file


def _pixels_of(f: film.Film) -> np.ndarray:
  with Image.open(io.BytesIO(f.encoded)) as im:
    assert im.format == "PNG" and im.mode == "L"
    return np.asarray(im)


def test_window_to_uint8_hand_computed():
  values = np.array([0, 50, 110, 125, 150, 200])
  # [50, 150] -> 0..255: (x - 50) * 2.55 rounded (153, 191.25), clipped.
  np.testing.assert_array_equal(film.window_to_uint8(values, 50, 150),
                                [0, 0, 153, 191, 255, 255])
  np.testing.assert_array_equal(film.window_to_uint8(values, 50, 150, invert=True),
                                [255, 255, 102, 64, 0, 0])
  with pytest.raises(ValueError, match="empty window"):
    film.window_to_uint8(values, 10, 10)


def test_window_bounds_follow_dicom_linear_window():
  # PS3.3 C.11.2.1.2: centre 40, width 400 -> x <= c - 0.5 - (w - 1) / 2 = -160 black,
  # x > c - 0.5 + (w - 1) / 2 = 239 white.
  assert film.window_bounds(40, 400) == (-160.0, 239.0)
  assert film.window_bounds(128, 256) == (0.0, 255.0)


def _twelve_bit(v: np.ndarray) -> np.ndarray:
  return np.round(v.astype(np.float64) * 4095 / 255).astype(np.uint16)


@pytest.mark.parametrize("name, kwargs, max_diff", [
    ("8-bit", {}, 0),
    ("12-bit stored", {"bits": 12, "twelve": True}, 0),
    ("MONOCHROME1", {"photometric": "MONOCHROME1", "inverted": True}, 0),
    ("VOI window covering the data", {"window": (128, 256)}, 0),
    ("12-bit, window covering the data", {"bits": 12, "twelve": True, "window": (2048, 4096)},
     1),
    ("rescale slope/intercept (modality LUT)", {"bits": 12, "twelve": True,
                                                "rescale": (1, -1024)}, 0),
    ("VOI LUT sequence (an inverting LUT)", {"voi_lut": "invert", "inverted": True}, 0),
])
def test_dicom_is_windowed_back_to_its_8_bit_image(name, kwargs, max_diff):
  v = film_pixels()
  stored = v
  if kwargs.pop("twelve", False):
    stored = _twelve_bit(v)
  if kwargs.pop("inverted", False) and kwargs.get("voi_lut") is None:
    stored = 255 - v  # MONOCHROME1 stores white as low: the file shows v
  if kwargs.get("voi_lut") == "invert":
    kwargs["voi_lut"] = (0, 8, 255 - np.arange(256))
    expected = 255 - v
  else:
    expected = v
  f = film.read_film(dicom_bytes(stored, **kwargs))
  assert f.source_format == "dicom" and f.patient_id == "PAT-001", name
  assert (f.height, f.width) == v.shape
  assert int(np.abs(_pixels_of(f).astype(int) - expected).max()) <= max_diff, name


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_dicom_decodes(syntax):
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  v = film_pixels(1)
  try:
    data = dicom_bytes(_twelve_bit(v), bits=12, syntax=getattr(uid, syntax))
  except (RuntimeError, NotImplementedError, ValueError) as e:
    pytest.skip(f"no {syntax} encoder installed here: {e}")
  np.testing.assert_array_equal(_pixels_of(film.read_film(data)), v)


def test_bundled_compressed_radiograph_decodes():
  """pydicom's own test files: a JPEG 2000 (via openjpeg) and JPEG-LS (via gdcm) film."""
  from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top
  for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
    path = get_testdata_file(name, download=False)
    if path is None:
      pytest.skip(f"pydicom's {name} is not installed")
    data = open(path, "rb").read()
    # An MR slice: refused as a film, but only after its pixels were understood.
    with pytest.raises(film.FilmError, match=film.REASON_DICOM_MODALITY):
      film.read_film(data)
    import pydicom  # pylint: disable=g-import-not-at-top
    ds = pydicom.dcmread(path)
    ds.Modality = "DX"
    out = io.BytesIO()
    ds.save_as(out)
    assert film.read_film(out.getvalue()).source_format == "dicom"


def _bundled(name):
  from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top
  path = get_testdata_file(name, download=False)
  if path is None:
    pytest.skip(f"pydicom's {name} is not installed")
  return open(path, "rb").read()


@pytest.mark.parametrize("make, reason", [
    (lambda: _bundled("rtplan.dcm"), film.REASON_DICOM_NO_PIXELS),
    (lambda: _bundled("CT_small.dcm"), film.REASON_DICOM_MODALITY),
    (lambda: dicom_bytes(np.stack([film_pixels(), film_pixels(1)]), frames=2),
     film.REASON_DICOM_FRAMES),
    (lambda: dicom_bytes(np.zeros((8, 8, 3), np.uint8), photometric="RGB"),
     film.REASON_DICOM_COLOUR),
    (lambda: _bundled("SC_rgb_rle.dcm"), film.REASON_DICOM_COLOUR),  # an RGB secondary capture
    (lambda: b"\0" * 128 + b"DICM" + b"\xff" * 40, film.REASON_DICOM_UNREADABLE),
    (lambda: dicom_bytes(film_pixels())[:200], film.REASON_DICOM_UNREADABLE),
    (lambda: dicom_bytes(film_pixels())[:-1000], film.REASON_DICOM_DECODE),
])
def test_dicom_rejections_say_why(make, reason):
  data = make()
  with pytest.raises(film.FilmError) as e:
    film.read_film(data)
  assert str(e.value).startswith(reason), str(e.value)


def test_undecodable_pixel_data_is_rejected_with_its_syntax():
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  import pydicom  # pylint: disable=g-import-not-at-top
  ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film_pixels())))
  ds.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
  from pydicom.encaps import encapsulate  # pylint: disable=g-import-not-at-top
  ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
  out = io.BytesIO()
  ds.save_as(out)
  with pytest.raises(film.FilmError, match=film.REASON_DICOM_DECODE + r" \(JPEG 2000"):
    film.read_film(out.getvalue())


def test_too_large_dicom_is_refused_before_decoding():
  with pytest.raises(film.FilmError, match="decompression-bomb size"):
    film.read_film(dicom_bytes(film_pixels()), max_pixels=100)


def _png16(values: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(values.astype(np.uint16)).save(out, format="PNG")
  return out.getvalue()


def test_12_bit_in_16_png_is_windowed_to_its_stored_range_not_truncated():
  v = film_pixels(2)
  data = _png16(_twelve_bit(v))
  assert film.needs_windowing(data)
  f = film.read_film(data)
  assert f.source_format == "png16"
  np.testing.assert_array_equal(_pixels_of(f), v)
  # What decoding to 8 bits used to do: keep the high byte, a nearly black film.
  assert int((_twelve_bit(v) >> 8).max()) == 15


def test_tiff_16_and_8_bit():
  v = film_pixels(3)
  for arr, mode in ((_twelve_bit(v), "I;16"), (v, "L")):
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="TIFF")
    f = film.read_film(out.getvalue())
    assert f.source_format == "tiff", mode
    np.testing.assert_array_equal(_pixels_of(f), v)


def test_8_bit_jpeg_and_png_pass_through():
  for fmt in ("JPEG", "PNG"):
    out = io.BytesIO()
    Image.fromarray(film_pixels()).save(out, format=fmt)
    assert not film.needs_windowing(out.getvalue())


def test_inspect_image_accepts_a_dicom_as_a_windowed_png(tmp_path):
  path = write_file(str(tmp_path / "IM0001"), dicom_bytes(_twelve_bit(film_pixels()), bits=12))
  info = image_io.inspect_image(path)
  assert isinstance(info, image_io.ImageInfo), info
  assert (info.format, info.source_format, info.channels) == ("png", "dicom", 1)
  assert info.patient_tag == "PAT-001"
  stored, h, w, c = image_io.load_encoded(path, info.sha256, info.format, None)
  assert (h, w, c) == (48, 64, 1)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored))), film_pixels())
  rejected = image_io.inspect_image(write_file(str(tmp_path / "ct.dcm"), _bundled("CT_small.dcm")))
  assert rejected.reason.startswith(film.REASON_DICOM_MODALITY)


def test_tiff_that_is_not_one_grayscale_film_is_rejected():
  out = io.BytesIO()
  Image.fromarray(np.zeros((8, 8), np.float32)).save(out, format="TIFF")  # mode F
  with pytest.raises(film.FilmError, match=film.REASON_HIGH_BIT_MODE + ": TIFF mode F"):
    film.read_film(out.getvalue())
  pages = io.BytesIO()
  first = Image.fromarray(film_pixels())
  first.save(pages, format="TIFF", save_all=True, append_images=[Image.fromarray(film_pixels(1))])
  with pytest.raises(film.FilmError, match=film.REASON_HIGH_BIT_MODE + ": 2 frames"):
    film.read_film(pages.getvalue())


def _jpeg_bytes() -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.full((32, 32), 128, np.uint8), "L").save(out, format="JPEG")
  return out.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"hello, not an image\n" * 10, film.REASON_NOT_IMAGE),
    (_jpeg_bytes()[:200], film.REASON_CORRUPT),
])
def test_one_reason_for_an_unreadable_image_in_every_reader(data, reason):
  from cxr_edge.edge import runtime  # pylint: disable=g-import-not-at-top
  with pytest.raises(film.UnreadableImage, match=f"^{reason}"):
    with film.opened_image(data) as im:
      im.load()
  rejection = image_io.inspect_data(data)
  assert isinstance(rejection, image_io.Rejection) and rejection.reason.startswith(reason)
  with pytest.raises(runtime.ImageError, match=f"^{reason}"):
    runtime.decode_grayscale(data)


def test_opened_image_lets_the_blocks_own_errors_through():
  with pytest.raises(film.FilmError, match="^mine$"):
    with film.opened_image(_jpeg_bytes()):
      raise film.FilmError("mine")


@pytest.mark.parametrize("edit, says", [
    (dicom_files.set_raw("RescaleSlope", "0"), "RescaleSlope 0.0 (zero"),
    (dicom_files.set_raw("RescaleSlope", "NaN"), "RescaleSlope"),
    (dicom_files.set_raw("WindowCenter", "NaN"), "WindowCenter"),
    (dicom_files.set_raw("WindowCenter", "inf"), "WindowCenter"),
    (dicom_files.set_raw("WindowWidth", "abc"), "WindowWidth"),
    (dicom_files.set_raw("NumberOfFrames", "two"), "NumberOfFrames"),
    (dicom_files.voi_lut(None, None), "VOILUTSequence without a usable LUT"),
    (dicom_files.voi_lut([256, 0, 0], list(range(256))), "LUTDescriptor bits 0"),
    (dicom_files.voi_lut([256, 0, 8], None), "VOILUTSequence without a usable LUT"),
    (dicom_files.drop("PhotometricInterpretation"), "missing PhotometricInterpretation"),
])
def test_malformed_dicom_attributes_are_this_films_error_naming_the_attribute(edit, says):
  with pytest.raises(film.FilmError) as e:
    film.read_film(dicom_files.malformed(edit))
  assert str(e.value).startswith(film.REASON_DICOM_ATTRIBUTE) and says in str(e.value)


def test_an_empty_window_falls_back_to_the_stored_range_and_width_1_thresholds():
  plain = _pixels_of(film.read_film(dicom_bytes(film_pixels())))
  no_window = _pixels_of(film.read_film(
      dicom_files.malformed(dicom_files.set_raw("WindowCenter", ""), film_pixels())))
  np.testing.assert_array_equal(no_window, plain)  # an empty value: no window given
  # Width 1 is legal: every value above c - 0.5 is white, the rest black.
  thresholded = _pixels_of(film.read_film(dicom_files.malformed(
      lambda ds: (setattr(ds, "WindowCenter", 100), setattr(ds, "WindowWidth", 1)),
      film_pixels())))
  np.testing.assert_array_equal(thresholded, np.where(film_pixels() > 99.5, 255, 0))


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated():
  from pydicom import uid  # pylint: disable=g-import-not-at-top

  def bomb(ds):  # declares 8 x 8 pixels, carries 4 MB of zeros: deflates to a few KB
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = bytes(4 << 20)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian

  data = dicom_files.rewritten(dicom_bytes(film_pixels()), bomb)
  assert len(data) < 64 << 10
  with pytest.raises(film.FilmError, match="deflated DICOM inflates past"):
    film.read_film(data, max_pixels=10_000)
  # A deflated film of honest size reads as its uncompressed twin.
  honest = dicom_files.rewritten(dicom_bytes(film_pixels()),
                      lambda ds: setattr(ds.file_meta, "TransferSyntaxUID",
                                         uid.DeflatedExplicitVRLittleEndian))
  np.testing.assert_array_equal(_pixels_of(film.read_film(honest, max_pixels=10_000)),
                                _pixels_of(film.read_film(dicom_bytes(film_pixels()))))


def test_a_compressed_frame_larger_than_declared_is_refused_from_its_header():
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  j2k = dicom_bytes(film_pixels(), syntax=uid.JPEG2000Lossless)
  assert film.read_film(j2k).height == 48  # honest: decodes
  lying = dicom_files.rewritten(j2k, lambda ds: (setattr(ds, "Rows", 8), setattr(ds, "Columns", 8)))
  with pytest.raises(film.FilmError, match="compressed frame is 64x48, larger than the 8x8"):
    film.read_film(lying)


def test_encoded_size_reads_jpeg_headers():
  buf = io.BytesIO()
  Image.new("L", (64, 48)).save(buf, format="JPEG")
  assert film._encoded_size(buf.getvalue()) == (48, 64)  # pylint: disable=protected-access
  assert film._encoded_size(b"no codestream here") is None  # pylint: disable=protected-access


def _tiff(pixels: np.ndarray, white_is_zero: bool = False) -> bytes:
  """A TIFF of `pixels`; with white_is_zero its PhotometricInterpretation tag says 0."""
  import struct  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="TIFF")
  data = bytearray(buf.getvalue())
  if white_is_zero:
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
      entry = ifd + 2 + 12 * k
      if struct.unpack("<H", data[entry:entry + 2])[0] == 262:
        data[entry + 8:entry + 10] = struct.pack("<H", 0)
  return bytes(data)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 4095)])
def test_a_tiff_stored_white_is_zero_reads_as_it_is_shown(dtype, top):
  v = film_pixels()
  shown = (v.astype(np.float64) * top / 255).round().astype(dtype)
  stored = (top - shown.astype(np.int64)).astype(dtype)  # white stored as 0
  normal = _pixels_of(film.read_film(_tiff(shown)))
  inverted = _pixels_of(film.read_film(_tiff(stored, white_is_zero=True)))
  np.testing.assert_array_equal(inverted, normal)


def test_one_stray_pixel_does_not_set_the_window_of_a_12_bit_png():
  twelve = _twelve_bit(film_pixels(size=(120, 100)))  # 12,000 pixels of 12-bit data
  clean = _pixels_of(film.read_film(_png16(twelve)))
  stray = twelve.copy()
  stray[0, 0] = 65535
  read = _pixels_of(film.read_film(_png16(stray)))
  np.testing.assert_array_equal(read[1:], clean[1:])  # the film as without the pixel
  assert read[0, 0] == 255  # the stray pixel clipped to white
  assert len(np.unique(read)) > 200


def test_a_compressed_film_without_an_installed_decoder_names_what_to_install(monkeypatch):
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  from pydicom.pixels.decoders import base  # pylint: disable=g-import-not-at-top
  data = dicom_bytes(film_pixels(), syntax=uid.RLELossless)
  assert film.read_film(data).height == 48
  # As on a platform where no decoder wheel could be installed.
  monkeypatch.setattr(base.Decoder, "is_available", property(lambda self: False))
  with pytest.raises(film.FilmError, match=r"^DICOM pixel data cannot be decoded \(RLE "
                     r"Lossless\): no decoder for it is installed; pip install "
                     r"'cxr-edge\[dicom\]' \(python-gdcm"):
    film.read_film(data)
