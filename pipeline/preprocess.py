"""The one preprocessing function: record -> model input.

Training, evaluation, the SavedModel signatures and TFLite calibration all call
`preprocess_image`; the edge runtime (edge/runtime.py) re-implements it in numpy and
a test proves the two agree.
"""
from typing import Dict

import tensorflow as tf

from cxr_edge.core import schema

_FEATURES = {
    **{k: tf.io.FixedLenFeature([], tf.string, default_value="" if k in schema.OPTIONAL_KEYS
                                else None) for k in schema.BYTES_KEYS},
    **{k: tf.io.FixedLenFeature([], tf.int64) for k in schema.INT_KEYS},
}


def parse_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses one serialized tf.train.Example written by cxr-convert."""
  return tf.io.parse_single_example(serialized, _FEATURES)


def decode_grayscale(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG or PNG bytes to uint8 [H, W, 1].

  decode_jpeg also decodes PNG. For a colour JPEG, libjpeg returns the luma (Y) plane;
  INTEGER_ACCURATE is the same IDCT Pillow uses, so the edge predictor (Pillow with
  draft("L")) gets the same pixels.
  """
  image = tf.io.decode_jpeg(encoded, channels=schema.CHANNELS, dct_method="INTEGER_ACCURATE")
  image.set_shape([None, None, schema.CHANNELS])
  return image


def resize_and_scale(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 [..., H, W, 1] -> float32 [..., S, S, 1] in [0, 1].

  Bilinear, half-pixel centres, no antialiasing (see schema.RESIZE_METHOD); the aspect
  ratio is not kept, as in the source article's loader.
  """
  resized = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                            method=schema.RESIZE_METHOD, antialias=False)
  return tf.clip_by_value(resized * schema.SCALE, 0.0, 1.0)


def preprocess_image(encoded: tf.Tensor, image_size: int = schema.DEFAULT_IMAGE_SIZE) -> tf.Tensor:
  """Encoded JPEG/PNG bytes -> float32 [S, S, 1] in [0, 1]. The single preprocessing."""
  return resize_and_scale(decode_grayscale(encoded), image_size)
