"""cxr-edge's on-device runtime: TensorFlow-free (LiteRT, numpy, Pillow, absl-py).

`cxr_edge.edge.runtime` loads and checks an exported TFLite model with its metadata, decodes and
preprocesses films exactly as training does, and predicts; `cxr_edge.edge.calibrate_lib` chooses
a clinic's operating threshold on its own labelled films. `cxr_edge.edge.predict` (cxr-predict)
and `cxr_edge.edge.calibrate` (cxr-calibrate) are thin binaries over them.

Nothing here imports TensorFlow, and nothing here imports export/ or model/ code that
does: export imports this package for its parity checks, never the reverse. A test
imports every module with TensorFlow made unimportable.
"""
