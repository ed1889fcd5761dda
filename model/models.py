"""The classifiers (tf_keras, so tensorflow-model-optimization can quantize them).

Both take float32 [N, S, S, 1] images already scaled to [0, 1] by
pipeline.preprocess (normalization stays outside the model, so the quantized part
starts at the first convolution) and output 2-class softmax probabilities in
schema.LABELS order.
"""
from typing import Callable, Dict

import tf_keras as keras

from pipeline import schema


def seed_cnn(image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
             dropout: float = 0.5) -> keras.Model:
  """The source article's network: 4 x (Conv3x3 ReLU + MaxPool), Flatten, Dropout, Dense.

  Filters 32, 64, 128, 128 (times `width`), Dense 512 ReLU, Dense 2 softmax.
  """
  inputs = keras.Input([image_size, image_size, schema.CHANNELS], name="image")
  x = inputs
  for i, filters in enumerate((32, 64, 128, 128)):
    x = keras.layers.Conv2D(max(1, int(filters * width)), 3, activation="relu",
                            name=f"conv{i + 1}")(x)
    x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dropout(dropout, name="dropout")(x)
  x = keras.layers.Dense(max(1, int(512 * width)), activation="relu", name="fc")(x)
  outputs = keras.layers.Dense(schema.NUM_CLASSES, activation="softmax", name="probs")(x)
  return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
  # Conv (no bias) -> BN -> ReLU: the order the TFLite converter folds BN into the conv
  # and fuses the activation, so int8 inference sees a single op.
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
  x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def _separable_block(x, filters: int, stride: int, name: str):
  x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(x)
  x = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(x)
  x = keras.layers.ReLU(name=f"{name}_dw_relu")(x)
  return _conv_bn_relu(x, filters, 1, 1, f"{name}_pw")


# (filters, stride) of the depthwise-separable blocks after the stride-2 stem.
_EDGE_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 2))


def edge_cnn(image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
             dropout: float = 0.2) -> keras.Model:
  """A compact int8-friendly network: MobileNet-v1-style separable blocks.

  Stride-2 3x3 stem, eight depthwise-separable blocks (32 -> 256 filters, four more
  stride-2 steps), global average pooling, Dropout, Dense 2 softmax. About 150k
  parameters at width 1. Plain ReLU (not ReLU6) and BN after every conv keep every op
  foldable and quantizable by both post-training and quantization-aware int8.
  """
  inputs = keras.Input([image_size, image_size, schema.CHANNELS], name="image")
  x = _conv_bn_relu(inputs, max(8, int(16 * width)), 3, 2, "stem")
  for i, (filters, stride) in enumerate(_EDGE_BLOCKS):
    x = _separable_block(x, max(8, int(filters * width)), stride, f"block{i + 1}")
  x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
  x = keras.layers.Dropout(dropout, name="dropout")(x)
  outputs = keras.layers.Dense(schema.NUM_CLASSES, activation="softmax", name="probs")(x)
  return keras.Model(inputs, outputs, name="edge_cnn")


MODELS: Dict[str, Callable[..., keras.Model]] = {"seed_cnn": seed_cnn, "edge_cnn": edge_cnn}


def build(name: str, image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
          dropout: float = None) -> keras.Model:
  """Builds a model by name.

  Raises:
    ValueError: unknown name.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
  kwargs = {"image_size": image_size, "width": width}
  if dropout is not None:
    kwargs["dropout"] = dropout
  return MODELS[name](**kwargs)
