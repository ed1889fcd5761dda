r"""cxr-verify: check every record of a cxr-convert output against its manifest.

Usage:
  cxr-verify --tfrecord_dir=/tmp/cxr_records
  python -m cxr_edge.pipeline.verify --tfrecord_dir=out/records

Exits 0 and prints the record counts when everything matches; otherwise exits 1 with
the first problem found.
"""
import sys

from absl import app
from absl import flags

from cxr_edge.core import cli
from cxr_edge.pipeline import verify_lib

_TFRECORD_DIR = flags.DEFINE_string("tfrecord_dir", None, "A cxr-convert output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    counts = verify_lib.verify(_TFRECORD_DIR.value)
  except verify_lib.VerificationError as e:
    sys.exit(f"cxr-verify: FAILED: {e}")
  print("cxr-verify: OK: " + ", ".join(f"{s} {n} records" for s, n in counts.items()))


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["tfrecord_dir"], prog="cxr-verify")


if __name__ == "__main__":
  run()
