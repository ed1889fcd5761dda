"""Input-pipeline throughput: this pipeline against the usual Keras loaders, one run.

All loaders see the same images at the same size and batch size, with the same
augmentations where they augment, and are timed in steady state (after warm-up). Rates
are images per second, so this pipeline reading only the train split compares fairly
with loaders reading the whole folder.
"""
import dataclasses
import os
import resource
import time
from typing import Callable, Dict, Iterable, Optional

from absl import logging
import tensorflow as tf
import tf_keras as keras

from cxr_edge.core import errors
from cxr_edge.core import schema
from cxr_edge.pipeline import augment as augment_lib
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import dataset

# The source article's augmentation (experiment V plus brightness), used by every loader.
ROTATION_DEG = 20.0
ZOOM = 0.3
BRIGHTNESS = (0.7, 1.3)


@dataclasses.dataclass
class Measurement:
  images_per_s: float
  images: int
  seconds: float


def _time_epochs(batches: Callable[[], Iterable], epochs: int, warmup_batches: int,
                 consume: Callable) -> Measurement:
  """Runs warm-up batches, then `epochs` full passes; returns the steady-state rate."""
  it = iter(batches())
  for _ in range(warmup_batches):
    consume(next(it))
  images, start = 0, time.perf_counter()
  for _ in range(epochs):
    for batch in batches():
      images += consume(batch)
  seconds = time.perf_counter() - start
  return Measurement(images / seconds, images, seconds)


def _count(x) -> int:
  return int(x.shape[0])


def bench_pipeline(data_dir: str, image_size: int, batch_size: int, epochs: int,
                   seed: int = 0) -> Measurement:
  """(1) this pipeline from TFRecords, with its augmentation where training runs it.

  The first epoch fills the cache and is the warm-up; augmentation is the XLA-compiled
  batched op the training step calls, so its cost is included.
  """
  config = augment_config.AugmentConfig(rotation_deg=ROTATION_DEG, zoom=ZOOM, brightness=BRIGHTNESS)
  ds = dataset.make_dataset(data_dir, "train", batch_size=batch_size, image_size=image_size,
                            seed=seed)
  augment = augment_lib.compiled(config)
  step = tf.Variable(0, dtype=tf.int64)

  def consume(batch):
    images, labels = batch
    out = augment(images, augment_lib.step_seed(seed, step.assign_add(1)))
    out.numpy()  # wait for the device
    return _count(labels)

  for batch in ds:  # warm-up epoch: decode + cache, and XLA compilation
    consume(batch)
  return _time_epochs(lambda: ds, epochs, 0, consume)


def bench_image_data_generator(image_dir: str, image_size: int, batch_size: int,
                               epochs: int) -> Measurement:
  """(2) the source article's loader: ImageDataGenerator.flow_from_directory."""
  gen = keras.preprocessing.image.ImageDataGenerator(
      rescale=1.0 / 255, rotation_range=ROTATION_DEG, zoom_range=ZOOM,
      brightness_range=BRIGHTNESS)
  flow = gen.flow_from_directory(image_dir, target_size=(image_size, image_size),
                                 color_mode="grayscale", batch_size=batch_size,
                                 class_mode="binary", classes=list(schema.LABELS), seed=0)

  def one_epoch():
    for i in range(len(flow)):
      yield flow[i]

  return _time_epochs(one_epoch, epochs, 5, lambda b: _count(b[1]))


def bench_image_dataset_from_directory(image_dir: str, image_size: int, batch_size: int,
                                       epochs: int) -> Measurement:
  """(3) image_dataset_from_directory + Keras augmentation layers mapped per batch."""
  ds = keras.utils.image_dataset_from_directory(
      image_dir, image_size=(image_size, image_size), color_mode="grayscale",
      batch_size=batch_size, seed=0, class_names=list(schema.LABELS))
  layers = keras.Sequential([
      keras.layers.Rescaling(1.0 / 255),
      keras.layers.RandomRotation(ROTATION_DEG / 360.0, fill_mode="nearest", seed=0),
      keras.layers.RandomZoom(ZOOM, fill_mode="nearest", seed=0),
      keras.layers.RandomBrightness((BRIGHTNESS[0] - 1, BRIGHTNESS[1] - 1), value_range=(0, 1),
                                    seed=0),
  ])
  ds = ds.map(lambda x, y: (layers(x, training=True), y),
              num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  return _time_epochs(lambda: ds, epochs, 5, lambda b: _count(b[1]))


def bench_decode_bound(image_dir: str, image_size: int, batch_size: int,
                       epochs: int) -> Measurement:
  """(4) read + decode_jpeg + resize every file in a tight parallel map; no augmentation."""
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(image_dir)
                 for f in names if f.lower().endswith((".jpeg", ".jpg", ".png")))

  def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
    return tf.image.resize(image, [image_size, image_size])

  ds = (tf.data.Dataset.from_tensor_slices(files)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .batch(batch_size).prefetch(tf.data.AUTOTUNE))
  return _time_epochs(lambda: ds, epochs, 5, _count)


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_all(data_dir: str, image_dir: str, image_size: int = schema.DEFAULT_IMAGE_SIZE,
            batch_size: int = 32, epochs: int = 3,
            only: Optional[Iterable[str]] = None) -> Dict[str, float]:
  """Runs the loaders in one process and returns the result dict the job prints.

  Args:
    data_dir: a cxr-convert output of the images.
    image_dir: the same images as a class-folder tree.
    image_size: model input side.
    batch_size: batch size for every loader.
    epochs: timed epochs per loader (after warm-up).
    only: subset of loader keys to run (default all).

  Returns:
    {"<loader>_images_per_s": rate, ..., "peak_rss_mb": ..., "<loader>_images": n}.
  """
  loaders = {
      "pipeline": lambda: bench_pipeline(data_dir, image_size, batch_size, epochs),
      "imagedatagenerator": lambda: bench_image_data_generator(image_dir, image_size, batch_size, epochs),
      "image_dataset_from_directory": lambda: bench_image_dataset_from_directory(
          image_dir, image_size, batch_size, epochs),
      "decode_bound": lambda: bench_decode_bound(image_dir, image_size, batch_size, epochs),
  }
  missing = [c for c in schema.LABELS if not os.path.isdir(os.path.join(image_dir, c))]
  if missing:
    raise errors.ConfigError(f"--image_dir {image_dir!r} must hold the class folders {missing} "
                             "directly (e.g. chest_xray/train, not chest_xray)")
  result: Dict[str, float] = {}
  for key, run in loaders.items():
    if only and key not in only:
      continue
    logging.info("benchmarking %s ...", key)
    m = run()
    logging.info("%s: %.0f images/s (%d images in %.1f s)", key, m.images_per_s, m.images,
                 m.seconds)
    result[f"{key}_images_per_s"] = round(m.images_per_s, 1)
    result[f"{key}_images"] = m.images
  if "pipeline_images_per_s" in result:
    for key in ("imagedatagenerator", "image_dataset_from_directory", "decode_bound"):
      if f"{key}_images_per_s" in result:
        result[f"pipeline_vs_{key}"] = round(
            result["pipeline_images_per_s"] / result[f"{key}_images_per_s"], 2)
  result["peak_rss_mb"] = round(peak_rss_mb(), 1)
  return result
