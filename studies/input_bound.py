r"""Is training input-bound? Training steps/s with the input pipeline vs in memory.

Usage (from the repository root):
  .venv/bin/python -m studies.input_bound --data_dir=/tmp/cxr_records --model=seed_cnn

Both runs use the same model, optimizer and on-device augmentation (the training step's),
so the ratio isolates the input pipeline: 1.0 means it is never the bottleneck. Prints
one JSON object. A study, not a job: cxr-benchmark-input measures the loaders alone and
imports no training code.
"""
import argparse
import json
import os
import time
from typing import Dict

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf
import tf_keras as keras

from cxr_edge.core import schema
from cxr_edge.model import models
from cxr_edge.model import training_model
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import benchmark_lib
from cxr_edge.pipeline import dataset


def input_bound(data_dir: str, model_name: str, image_size: int, batch_size: int,
                steps: int, seed: int = 0) -> Dict[str, float]:
  """Training steps/s with the real pipeline vs the same batches already in memory."""
  config = augment_config.AugmentConfig(rotation_deg=benchmark_lib.ROTATION_DEG,
                                     zoom=benchmark_lib.ZOOM)
  real = dataset.make_dataset(data_dir, "train", batch_size=batch_size, image_size=image_size,
                              seed=seed, repeat=True, drop_remainder=True)
  in_memory = list(real.take(min(steps, 20)))
  memory = tf.data.Dataset.from_tensor_slices(
      tuple(tf.stack([b[i] for b in in_memory]) for i in range(2))).repeat()

  def rate(ds) -> float:
    keras.utils.set_random_seed(seed)
    model = training_model.AugmentingModel(models.build(model_name, image_size), config, seed)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
    model.fit(ds, epochs=1, steps_per_epoch=max(5, steps // 5), verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)

  for _ in real.take(dataset.split_size(data_dir, "train") // batch_size + 1):
    pass  # fill the cache, as after the first epoch of training
  memory_rate, real_rate = rate(memory), rate(real)
  return {"train_steps_per_s_in_memory": round(memory_rate, 3),
          "train_steps_per_s_pipeline": round(real_rate, 3),
          "input_bound_ratio": round(real_rate / memory_rate, 3)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--model", default="seed_cnn", choices=sorted(models.MODELS))
  parser.add_argument("--image_size", type=int, default=schema.DEFAULT_IMAGE_SIZE)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()
  print(json.dumps(input_bound(args.data_dir, args.model, args.image_size, args.batch_size,
                               args.steps), sort_keys=True))


if __name__ == "__main__":
  main()
