"""Study helpers that README figures depend on (studies/ is not installed)."""
import os

import numpy as np
import tensorflow as tf

from edge import runtime
from pipeline import preprocess
from studies import equalize
from tests.conftest import SAMPLE_DIR


def test_equalization_is_bit_identical_in_tensorflow_and_numpy():
  for label in ("NORMAL", "PNEUMONIA"):
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[:3]:
      data = open(os.path.join(SAMPLE_DIR, label, name), "rb").read()
      gray = runtime.decode_grayscale(data)
      want = equalize.equalize_tf(preprocess.decode_grayscale(data)).numpy()[..., 0]
      got = equalize.equalize_np(gray)
      np.testing.assert_array_equal(got, want)
      assert got.min() == 0 and got.max() == 255  # the grey range is stretched
  flat = np.full((4, 5), 7, np.uint8)
  np.testing.assert_array_equal(equalize.equalize_np(flat), flat)
  np.testing.assert_array_equal(equalize.equalize_tf(tf.constant(flat[..., None])).numpy()[..., 0],
                                flat)
