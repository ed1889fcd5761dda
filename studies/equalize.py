"""Global histogram equalization before the resize: a preprocessing variant, studied.

Not the product's preprocessing. `register()` swaps it into cxr_edge.pipeline.preprocess (training,
evaluation, export, calibration images) and cxr_edge.edge.runtime (the TFLite scoring) for the
length of a study process; both versions are integer-exact, so they agree bit for bit.
"""
import numpy as np
import tensorflow as tf

from cxr_edge.edge import runtime
from cxr_edge.pipeline import preprocess


def equalize_tf(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 1] -> uint8, each grey level mapped through the image's own CDF."""
  flat = tf.reshape(tf.cast(image, tf.int32), [-1])
  hist = tf.math.bincount(flat, minlength=256, maxlength=256)
  cdf = tf.cumsum(tf.cast(hist, tf.int64))
  n = tf.cast(tf.size(flat), tf.int64)
  cdf_min = tf.gather(cdf, tf.reduce_min(flat))
  denom = tf.maximum(n - cdf_min, 1)
  lut = tf.clip_by_value(((cdf - cdf_min) * 255 + denom // 2) // denom, 0, 255)
  lut = tf.where(n > cdf_min, lut, tf.range(256, dtype=tf.int64))  # a flat image stays
  return tf.cast(tf.gather(lut, tf.cast(image, tf.int32)), tf.uint8)


def equalize_np(image: np.ndarray) -> np.ndarray:
  """The same mapping in numpy, for uint8 [H, W]."""
  cdf = np.cumsum(np.bincount(image.ravel(), minlength=256).astype(np.int64))
  n = np.int64(image.size)
  cdf_min = cdf[int(image.min())]
  if n <= cdf_min:
    return image.copy()
  denom = n - cdf_min
  lut = np.clip(((cdf - cdf_min) * 255 + denom // 2) // denom, 0, 255)
  return lut[image].astype(np.uint8)


def register() -> None:
  """Equalizes in every runtime of this process (training, export, edge scoring)."""
  resize_and_scale, decode = preprocess.resize_and_scale, preprocess.decode_grayscale

  def preprocess_image(encoded, image_size=preprocess.schema.DEFAULT_IMAGE_SIZE):
    return resize_and_scale(equalize_tf(decode(encoded)), image_size)

  resize, decode_np = runtime.resize_bilinear, runtime.decode_grayscale

  def preprocess_np(data, image_size, scale):
    gray = equalize_np(decode_np(data)).astype(np.float32)
    return np.clip(resize(gray, image_size) * np.float32(scale), 0.0, 1.0)[..., None]

  preprocess.preprocess_image = preprocess_image
  runtime.preprocess = preprocess_np
