r"""Runs a cxr-edge job with the study-only networks available by name.

Usage (from the repository root):
  .venv/bin/python -m studies.with_study_models model.train --data_dir=/tmp/rec \
      --model_dir=/tmp/dwsep --model=edge_dwsep_cnn
  .venv/bin/python -m studies.with_study_models export.export --model_dir=/tmp/dwsep ...
"""
import runpy
import sys

from studies import models as study_models


def main() -> None:
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  study_models.register()  # before the job module defines its --model enum
  module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
