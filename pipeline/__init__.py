"""cxr-edge data pipeline: conversion to TFRecords and the tf.data input pipeline."""
import os

# tensorflow-model-optimization only works with Keras 2 (tf_keras); this must be set
# before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
