import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import numpy as np
import tensorflow as tf

from cxr_edge.pipeline import augment
from cxr_edge.pipeline import augment_config


def _images(seed=0, shape=(4, 30, 40, 1)):
  return tf.constant(np.random.default_rng(seed).random(shape, dtype=np.float32))


def test_config_from_names():
  cfg = augment_config.config_from_names(["rotation", "zoom"])
  assert (cfg.rotation_deg, cfg.zoom, cfg.brightness) == (20.0, 0.3, (1.0, 1.0))
  assert cfg.names() == ("rotation", "zoom")
  assert not augment_config.config_from_names(["none"]).enabled
  with pytest.raises(ValueError, match="unknown"):
    augment_config.config_from_names(["flip"])


def test_disabled_config_is_identity():
  x = _images()
  np.testing.assert_array_equal(augment.augment_batch(x, [1, 2], augment_config.AugmentConfig()), x)


def test_identity_transform_warp_is_exact():
  x = _images()
  identity = tf.constant([[1, 0, 0, 0, 1, 0, 0, 0]] * 4, tf.float32)
  np.testing.assert_allclose(augment.affine_warp(x, identity), x, atol=1e-6)


def test_xla_warp_matches_the_tf_op():
  cfg = augment_config.AugmentConfig(rotation_deg=25, zoom=0.3, translation=0.1)
  x = _images(1)
  seeds = tf.random.split(tf.constant([3, 4], tf.int64), num=7, alg="philox")
  t = augment.transforms(4, 30.0, 40.0, cfg, seeds)
  op = tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=t, output_shape=[30, 40], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="NEAREST")
  np.testing.assert_allclose(augment.affine_warp(x, t), op, atol=1e-4)
  compiled = augment.compiled(cfg)(x, tf.constant([3, 4], tf.int64))
  eager_op = augment.augment_batch(x, [3, 4], cfg, use_op=True)
  np.testing.assert_allclose(compiled, eager_op, atol=1e-4)


def test_augmentation_changes_images_is_seeded_and_stays_in_range():
  cfg = augment_config.config_from_names(["rotation", "zoom", "brightness", "contrast", "translation"])
  x = _images(2)
  fn = augment.compiled(cfg)
  a = fn(x, augment.step_seed(7, 0)).numpy()
  b = fn(x, augment.step_seed(7, 0)).numpy()
  c = fn(x, augment.step_seed(7, 1)).numpy()
  assert a.shape == x.shape and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - x.numpy()).mean() > 0.05
  assert np.abs(a - c).mean() > 0.05
  assert a.min() >= 0.0 and a.max() <= 1.0
  # Each image of the batch gets its own parameters.
  same = augment.compiled(augment_config.config_from_names(["brightness"]))(
      tf.ones([4, 8, 8, 1]) * 0.5, augment.step_seed(7, 0)).numpy()
  assert len(np.unique(same[:, 0, 0, 0].round(5))) == 4


def test_brightness_range_is_respected():
  cfg = augment_config.AugmentConfig(brightness=(0.7, 1.3))
  out = augment.compiled(cfg)(tf.ones([256, 2, 2, 1]) * 0.5, augment.step_seed(0, 0)).numpy()
  factors = out[:, 0, 0, 0] / 0.5
  assert factors.min() >= 0.7 - 1e-5 and factors.max() <= 1.3 + 1e-5
  assert factors.min() < 0.75 and factors.max() > 1.25  # spans the range


def test_mixup_blends_each_image_with_its_reversed_partner_seeded():
  images = tf.random.stateless_uniform([6, 8, 8, 1], [1, 2])
  seed = tf.constant([7, 3], tf.int64)
  mixed, lam = augment.mixup(images, seed, 0.4)
  again, lam_again = augment.mixup(images, seed, 0.4)
  np.testing.assert_array_equal(mixed, again)
  np.testing.assert_array_equal(lam, lam_again)
  lam = lam.numpy()
  assert lam.shape == (6,) and np.all(lam >= 0.5) and np.all(lam <= 1.0)
  assert len(set(np.round(lam, 6))) > 1  # one draw per image
  want = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[::-1]
  np.testing.assert_allclose(mixed, want, rtol=1e-6)
  other, _ = augment.mixup(images, tf.constant([7, 4], tf.int64), 0.4)
  assert not np.allclose(mixed, other)
