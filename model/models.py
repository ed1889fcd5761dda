"""The classifiers (tf_keras, so tensorflow-model-optimization can quantize them).

All take float32 [N, S, S, 1] images already scaled to [0, 1] by
cxr_edge.pipeline.preprocess (normalization stays outside the model, so the quantized part
starts at the first convolution) and output softmax probabilities of `num_classes`
classes in schema.TASK_CLASSES order (2: NORMAL, PNEUMONIA; 3: NORMAL, BACTERIAL,
VIRAL). The last Dense layer is named LOGITS_LAYER and the softmax is a separate layer,
so `logits_model` can cut the network before it: the exported TFLite models output
logits, which int8 quantizes without the ties a saturated softmax makes.

tf_keras is imported inside the builders: the registry (MODELS) is read by cxr-train's
flag definitions, which must not load TensorFlow before the flags and paths are checked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

from cxr_edge.core import errors
from cxr_edge.core import schema

if TYPE_CHECKING:
  import tf_keras as keras


def seed_cnn(image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
             dropout: float = 0.5, num_classes: int = schema.NUM_CLASSES) -> keras.Model:
  """The source article's network: 4 x (Conv3x3 ReLU + MaxPool), Flatten, Dropout, Dense.

  Filters 32, 64, 128, 128 (times `width`), Dense 512 ReLU, Dense num_classes softmax.
  """
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  inputs = keras.Input([image_size, image_size, schema.CHANNELS], name="image")
  x = inputs
  for i, filters in enumerate((32, 64, 128, 128)):
    x = keras.layers.Conv2D(max(1, int(filters * width)), 3, activation="relu",
                            name=f"conv{i + 1}")(x)
    x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dropout(dropout, name="dropout")(x)
  x = keras.layers.Dense(max(1, int(512 * width)), activation="relu", name="fc")(x)
  return keras.Model(inputs, _classes(x, num_classes), name="seed_cnn")


# Keras' default BN momentum (0.99) averages over ~100 steps; at Adam 1e-3 the weights
# move faster than that, and validation-time statistics lagged so far that outputs were
# miscalibrated (accuracy at 0.5 swung between epochs while ROC-AUC stayed high).
BN_MOMENTUM = 0.9


def conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  # Conv (no bias) -> BN -> ReLU: the order the TFLite converter folds BN into the conv
  # and fuses the activation, so int8 inference sees a single op.
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
  x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


LOGITS_LAYER = "logits"


def _classes(x, num_classes: int):
  """Dense logits, then softmax as its own layer (see logits_model)."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
  return keras.layers.Softmax(name="probs")(logits)


def head(x, dropout: float, num_classes: int = schema.NUM_CLASSES):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
  x = keras.layers.Dropout(dropout, name="dropout")(x)
  return _classes(x, num_classes)


# (filters, stride) of edge_cnn's 3x3 Conv-BN-ReLU blocks.
_EDGE_BLOCKS = ((16, 2), (32, 2), (64, 2), (64, 1), (128, 2), (128, 1), (160, 2))


def edge_cnn(image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
             dropout: float = 0.2, num_classes: int = schema.NUM_CLASSES) -> keras.Model:
  """The compact int8 edge network: seven strided 3x3 Conv-BN-ReLU blocks, GAP, Dense.

  Chosen by measurement over a depthwise-separable design (studies/models.py): an int8
  TFLite file stores ~28 bytes of per-channel quantization data (scales, zero points,
  int32 bias) for every output channel, and a depthwise channel holds only 9 weights,
  so that design's int8 file stayed at 33% of its float32 size and gained less from
  int8 kernels. Plain 3x3 convolutions have few, weight-heavy channels (~470k
  parameters in 592 channels at width 1). BN follows each bias-free conv so the
  converter folds it; plain ReLU fuses into the int8 conv.
  """
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  inputs = keras.Input([image_size, image_size, schema.CHANNELS], name="image")
  x = inputs
  for i, (filters, stride) in enumerate(_EDGE_BLOCKS):
    x = conv_bn_relu(x, max(8, int(filters * width)), 3, stride, f"block{i + 1}")
  return keras.Model(inputs, head(x, dropout, num_classes), name="edge_cnn")


# The product's networks. Study-only designs (studies/models.py) register themselves here
# when a study runs; nothing the product ships depends on them.
MODELS: Dict[str, Callable[..., keras.Model]] = {"seed_cnn": seed_cnn, "edge_cnn": edge_cnn}


def logits_model(model: keras.Model) -> keras.Model:
  """The same network and weights, output cut before the softmax: [N, classes] logits.

  Works on a plain model from `build` and on its tfmot quantize_model copy (whose
  wrapped layer is named "quant_" + LOGITS_LAYER).
  """
  import tf_keras as keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  for name in (LOGITS_LAYER, "quant_" + LOGITS_LAYER):
    try:
      layer = model.get_layer(name)
    except ValueError:
      continue
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_logits")
  raise errors.ConfigError(f"{model.name} has no {LOGITS_LAYER!r} layer")


def build(name: str, image_size: int = schema.DEFAULT_IMAGE_SIZE, width: float = 1.0,
          dropout: float = None, task: str = schema.TASK_BINARY) -> keras.Model:
  """Builds a model by name, with one output per class of `task` (schema.TASK_CLASSES).

  Raises:
    ValueError: unknown name or task.
  """
  if name not in MODELS:
    raise errors.ConfigError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
  if task not in schema.TASK_CLASSES:
    raise errors.ConfigError(f"unknown task {task!r}; choose from {schema.TASKS}")
  kwargs = {"image_size": image_size, "width": width,
            "num_classes": len(schema.TASK_CLASSES[task])}
  if dropout is not None:
    kwargs["dropout"] = dropout
  return MODELS[name](**kwargs)
