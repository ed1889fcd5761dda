"""cxr-edge export: SavedModel and TFLite conversion, with the package metadata.

The TensorFlow-free runtime that runs the exported models lives in edge/.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
