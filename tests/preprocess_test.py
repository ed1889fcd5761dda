import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import numpy as np
import tensorflow as tf

from cxr_edge.pipeline import preprocess
from tests.conftest import image_bytes


def test_preprocess_shapes_range_and_formats():
  for fmt, mode in (("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "LA")):
    out = preprocess.preprocess_image(image_bytes(fmt, mode, size=(60, 40)), 24).numpy()
    assert out.shape == (24, 24, 1) and out.dtype == np.float32, (fmt, mode)
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() > 0.5


def test_resize_is_bilinear_half_pixel_without_antialias():
  # A 4x1 ramp resized to 2x1: half-pixel centres sample at x=0.5 and x=2.5.
  image = tf.constant([[[0], [100], [200], [250]]], tf.uint8)  # [1, 4, 1]
  image = tf.tile(image, [2, 1, 1])  # [2, 4, 1]
  out = preprocess.resize_and_scale(image, 2).numpy()[0, :, 0] * 255
  np.testing.assert_allclose(out, [50, 225], atol=1e-3)


def test_parse_example_roundtrip():
  ex = tf.train.Example(features=tf.train.Features(feature={
      k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
      for k in preprocess.schema.BYTES_KEYS} | {
      k: tf.train.Feature(int64_list=tf.train.Int64List(value=[7]))
      for k in preprocess.schema.INT_KEYS}))
  parsed = preprocess.parse_example(ex.SerializeToString())
  assert int(parsed[preprocess.schema.KEY_LABEL]) == 7
  assert parsed[preprocess.schema.KEY_PATIENT].numpy() == b"x"
