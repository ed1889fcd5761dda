"""Network designs that were compared with the product's and not chosen.

`register()` adds them to cxr_edge.model.models.MODELS for the length of a study process, so
cxr-train and cxr-export can train and convert them (studies/with_study_models.py).
"""
import tf_keras as keras

from cxr_edge.core import schema
from cxr_edge.model import models


def _separable_block(x, filters: int, stride: int, name: str):
  x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(x)
  x = keras.layers.BatchNormalization(momentum=models.BN_MOMENTUM, name=f"{name}_dw_bn")(x)
  x = keras.layers.ReLU(name=f"{name}_dw_relu")(x)
  return models.conv_bn_relu(x, filters, 1, 1, f"{name}_pw")


# (filters, stride) of edge_dwsep_cnn's depthwise-separable blocks after the stem.
_DWSEP_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 2))


def edge_dwsep_cnn(image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
                   dropout: float = 0.2, num_classes: int = schema.NUM_CLASSES) -> keras.Model:
  """MobileNet-v1-style alternative: stride-2 stem, eight depthwise-separable blocks.

  ~213k parameters but 2,000+ channels; kept to reproduce the comparison that chose
  edge_cnn (see edge_cnn's docstring and the README).
  """
  inputs = keras.Input([image_size, image_size, schema.CHANNELS], name="image")
  x = models.conv_bn_relu(inputs, max(8, int(16 * width)), 3, 2, "stem")
  for i, (filters, stride) in enumerate(_DWSEP_BLOCKS):
    x = _separable_block(x, max(8, int(filters * width)), stride, f"block{i + 1}")
  return keras.Model(inputs, models.head(x, dropout, num_classes), name="edge_dwsep_cnn")


STUDY_MODELS = {"edge_dwsep_cnn": edge_dwsep_cnn}


def register() -> None:
  """Makes the study designs buildable by name (before cxr_edge.model.train defines --model)."""
  models.MODELS.update(STUDY_MODELS)
