"""cxr-edge export (SavedModel, TFLite) and the TensorFlow-free edge predictor.

Nothing here may import TensorFlow at package import time: `export.edge_lib`,
`export.predict` and `export.calibrate` must run in a virtualenv that has only
ai-edge-litert, numpy, pillow and absl-py.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
