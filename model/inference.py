"""Inference with a Keras classifier: PNEUMONIA probabilities of images or of a split.

Evaluation, training and the export report use these; evaluation imports no training code.
"""
from typing import Dict

import numpy as np
import tf_keras as keras

from cxr_edge.pipeline import dataset


def predict_images(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """float64 [N] PNEUMONIA probabilities of preprocessed images [N, S, S, 1]."""
  out = [model(images[i:i + batch_size], training=False).numpy()[:, 1]
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out).astype(np.float64) if out else np.zeros([0])


def predict_split(model: keras.Model, data_dir: str, split: str, image_size: int,
                  batch_size: int = 64) -> Dict[str, np.ndarray]:
  """Positive-class probabilities for every record of a split, in file order.

  Returns:
    {"probability", "label", "filename", "patient_id"} numpy arrays.
  """
  split_records = dataset.read_split(data_dir, split, image_size)
  return {"probability": predict_images(model, split_records.images, batch_size),
          "label": split_records.labels, "filename": split_records.filenames,
          "patient_id": split_records.patients}
