import io
import os
import struct

import pytest
from PIL import Image

from cxr_edge.core import image_io
from tests.conftest import image_bytes, require_tensorflow, write_file


@pytest.mark.parametrize("fmt, mode, channels", [
    ("JPEG", "L", 1), ("JPEG", "RGB", 3), ("PNG", "L", 1), ("PNG", "LA", 2),
    ("PNG", "RGB", 3), ("PNG", "RGBA", 4)])
def test_accepts_supported_images(tmp_path, fmt, mode, channels):
  data = image_bytes(fmt, mode, size=(30, 20))
  info = image_io.inspect_image(write_file(str(tmp_path / "x"), data))
  assert isinstance(info, image_io.ImageInfo)
  assert (info.format, info.height, info.width, info.channels) == (
      fmt.lower(), 20, 30, channels)
  assert info.size_bytes == len(data)


def _reason(tmp_path, data, **kw):
  result = image_io.inspect_image(write_file(str(tmp_path / "f"), data), **kw)
  assert isinstance(result, image_io.Rejection), result
  return result.reason


def test_rejects_empty(tmp_path):
  assert _reason(tmp_path, b"") == image_io.REASON_EMPTY


def test_rejects_non_image(tmp_path):
  assert _reason(tmp_path, b"hello, not an image\n" * 10) == image_io.REASON_NOT_IMAGE


def test_rejects_truncated_jpeg_and_png(tmp_path):
  for fmt in ("JPEG", "PNG"):
    data = image_bytes(fmt, size=(64, 64))
    assert _reason(tmp_path, data[:len(data) // 2]).startswith(image_io.REASON_CORRUPT), fmt


def test_rejects_unsupported_format(tmp_path):
  out = io.BytesIO()
  Image.new("L", (8, 8)).save(out, format="BMP")
  assert _reason(tmp_path, out.getvalue()) == f"{image_io.REASON_FORMAT}: BMP"


def test_rejects_cmyk_jpeg(tmp_path):
  out = io.BytesIO()
  Image.new("CMYK", (8, 8)).save(out, format="JPEG")
  assert _reason(tmp_path, out.getvalue()).startswith(image_io.REASON_MODE)


def test_rejects_decompression_bomb_before_decoding(tmp_path):
  data = image_bytes("PNG", size=(100, 100))
  assert _reason(tmp_path, data, max_pixels=9_999).startswith(image_io.REASON_BOMB)


def test_load_encoded_keeps_source_bytes_or_downscales(tmp_path):
  data = image_bytes("JPEG", "RGB", size=(80, 40))
  path = write_file(str(tmp_path / "a.jpeg"), data)
  sha = image_io.inspect_image(path).sha256
  assert image_io.load_encoded(path, sha, "jpeg", None) == (data, 40, 80, 3)
  assert image_io.load_encoded(path, sha, "jpeg", 100)[0] == data
  encoded, h, w, c = image_io.load_encoded(path, sha, "jpeg", 20)
  assert (h, w, c) == (10, 20, 3)
  assert Image.open(io.BytesIO(encoded)).size == (20, 10)


def test_load_encoded_rejects_a_changed_or_removed_file(tmp_path):
  path = write_file(str(tmp_path / "a.jpeg"), image_bytes())
  changed = image_io.load_encoded(path, "0" * 64, "jpeg", None)
  assert changed.reason.startswith(image_io.REASON_CHANGED)
  os.remove(path)
  removed = image_io.load_encoded(path, "0" * 64, "jpeg", None)
  assert removed.reason.startswith(image_io.REASON_CHANGED)


def _png_damaged(kind: str) -> bytes:
  data = image_bytes("PNG", size=(64, 64))
  if kind == "idat_crc":
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    flipped = bytearray(data)
    flipped[at + 4 + length] ^= 0xFF  # first byte of the IDAT chunk's CRC
    return bytes(flipped)
  return data[:data.index(b"IEND") - 4]  # "no_iend"


@pytest.mark.parametrize("kind", ["idat_crc", "no_iend"])
def test_png_that_tensorflow_refuses_is_rejected(tmp_path, kind):
  """What converts must also train: Pillow decodes these, libpng (TF) does not."""
  require_tensorflow()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = _png_damaged(kind)
  Image.open(io.BytesIO(data)).load()  # Pillow alone would accept it
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.io.decode_png(data)
  assert _reason(tmp_path, data).startswith(image_io.REASON_CORRUPT)


def test_png_chunk_check_passes_sound_files_and_trailing_bytes():
  require_tensorflow()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for mode in ("L", "RGB", "RGBA"):
    data = image_bytes("PNG", mode)
    assert image_io.png_chunk_problem(data) is None
    assert image_io.png_chunk_problem(data + b"junk after IEND") is None
    tf.io.decode_png(data + b"junk after IEND")  # libpng accepts it too
  assert image_io.png_chunk_problem(image_bytes("JPEG")) is None  # not a PNG: not its job


def test_read_file_reads_regular_files_only_and_bounded(tmp_path):
  """A FIFO or a link to a device named like a film would hang or never end."""
  film = tmp_path / "a.png"
  film.write_bytes(b"x" * 100)
  assert image_io.read_file(str(film)) == b"x" * 100
  fifo = tmp_path / "fifo.png"
  os.mkfifo(fifo)
  (tmp_path / "zero.png").symlink_to("/dev/zero")
  for path, kind in ((fifo, "a FIFO"), (tmp_path / "zero.png", "a character device"),
                     (tmp_path, "a folder")):
    with pytest.raises(image_io.UnreadableFile, match=f"not a regular file \\({kind}\\)"):
      image_io.read_file(str(path))
  with pytest.raises(image_io.UnreadableFile, match="file too large"):
    image_io.read_file(str(film), max_bytes=99)
  with pytest.raises(image_io.UnreadableFile, match="unreadable file: No such file"):
    image_io.read_file(str(tmp_path / "missing.png"))
  rejection = image_io.inspect_image(str(fifo))  # cxr-convert's first read
  assert rejection.reason == "not a regular file (a FIFO)"
