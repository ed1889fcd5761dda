import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from cxr_edge.model import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_builds_trains_and_quantizes(name):
  keras.utils.set_random_seed(0)
  model = models.build(name, image_size=48)
  assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 2)
  # Two separable blobs: bright centre = class 1.
  rng = np.random.default_rng(0)
  x = rng.random((64, 48, 48, 1), dtype=np.float32) * 0.3
  y = np.arange(64) % 2
  x[y == 1, 16:32, 16:32] += 0.6
  model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
  losses = model.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
  assert losses[-1] < losses[0] * 0.7, losses
  probs = model.predict(x[:4], verbose=0)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  logits = models.logits_model(model).predict(x[:4], verbose=0)
  np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probs, atol=1e-6)
  quantized = tfmot.quantization.keras.quantize_model(model)
  assert quantized(x[:2]).shape == (2, 2)
  q_logits = models.logits_model(quantized)(x[:2])
  np.testing.assert_allclose(tf.nn.softmax(q_logits).numpy(), quantized(x[:2]).numpy(), atol=1e-6)


def test_edge_cnn_is_small_and_parameters_scale():
  assert models.build("edge_cnn").count_params() < 500_000
  assert models.build("seed_cnn").count_params() > 3_000_000
  assert models.build("seed_cnn", width=0.5).count_params() < models.build("seed_cnn").count_params()
  assert models.build("seed_cnn", dropout=0.3).get_layer("dropout").rate == 0.3


def test_weights_load_into_the_current_layout():
  # Runs trained before the softmax became its own layer have the same weights in the
  # same order, so export rebuilds the current layout and copies them across.
  old_in = keras.Input([48, 48, 1])
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(old_in))
  old = keras.Model(old_in, keras.layers.Dense(2, activation="softmax")(x))
  new_in = keras.Input([48, 48, 1])
  y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(new_in))
  new = keras.Model(new_in, keras.layers.Softmax()(keras.layers.Dense(2, name="logits")(y)))
  new.set_weights(old.get_weights())
  x = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
  np.testing.assert_allclose(new(x).numpy(), old(x).numpy(), atol=1e-6)


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model"):
    models.build("resnet")


def test_study_designs_are_not_in_the_product_but_register_for_a_study():
  assert set(models.MODELS) == {"seed_cnn", "edge_cnn"}
  from studies import models as study_models  # pylint: disable=g-import-not-at-top
  saved = dict(models.MODELS)
  try:
    study_models.register()
    model = models.build("edge_dwsep_cnn", 150)
    assert model.count_params() == 212_802  # the README's design comparison
    assert models.logits_model(model).output_shape == (None, 2)
  finally:
    models.MODELS.clear()
    models.MODELS.update(saved)
