"""Inference with a Keras classifier: class and PNEUMONIA probabilities of images or of a
split.

Evaluation, training and the export report use these; evaluation imports no training code.
"""
from typing import Dict

import numpy as np
import tf_keras as keras

from cxr_edge.core import metrics
from cxr_edge.pipeline import dataset


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """float32 [N, classes] softmax outputs of preprocessed images [N, S, S, 1]."""
  out = [model(images[i:i + batch_size], training=False).numpy()
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros([0, model.output_shape[-1]], np.float32)


def predict_images(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """float64 [N] PNEUMONIA probabilities of preprocessed images [N, S, S, 1]."""
  return metrics.p_pneumonia(predict_probs(model, images, batch_size))


def predict_split(model: keras.Model, data_dir: str, split: str, image_size: int,
                  batch_size: int = 64) -> Dict[str, np.ndarray]:
  """PNEUMONIA and class probabilities for every record of a split, in file order.

  Returns:
    {"probability", "probs" [N, classes], "label", "subtype", "filename", "patient_id"}
    numpy arrays.
  """
  split_records = dataset.read_split(data_dir, split, image_size)
  probs = predict_probs(model, split_records.images, batch_size)
  return {"probability": metrics.p_pneumonia(probs), "probs": probs,
          "label": split_records.labels, "subtype": split_records.subtypes,
          "filename": split_records.filenames, "patient_id": split_records.patients}
