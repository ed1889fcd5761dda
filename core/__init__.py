"""cxr-edge's TensorFlow-free core: what the device and the training side both need.

Constants and keys (`schema`), errors (`errors`), film reading and windowing (`film`),
image checks and hashing (`image_io`), labelled-folder scanning (`folders`), the input
guard (`guard`), overlays (`overlay`), numpy metrics and threshold rules (`metrics`), the
package metadata (`package_info`) and the command-line runner (`cli`). It imports no other
package of ours and never TensorFlow or LiteRT.
"""
