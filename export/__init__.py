"""cxr-edge export (SavedModel, TFLite) and the TensorFlow-free edge predictor.

Nothing here may import TensorFlow at package import time: `export.predict` must run
in a virtualenv that has only ai-edge-litert, numpy and pillow.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
