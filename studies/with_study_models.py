r"""Runs a cxr-edge job with the study-only variants: networks by name, --equalize.

Usage (from the repository root):
  .venv/bin/python -m studies.with_study_models cxr_edge.model.train --data_dir=/tmp/rec \
      --model_dir=/tmp/dwsep --model=edge_dwsep_cnn
  .venv/bin/python -m studies.with_study_models cxr_edge.export.export --model_dir=/tmp/dwsep ...
  .venv/bin/python -m studies.with_study_models --equalize cxr_edge.model.train --data_dir=/tmp/rec \
      --model_dir=/tmp/heq_42 --external_dir=../shared/data/chest_xray/external

--equalize (before the module): histogram equalization in every preprocessing of the
process (studies/equalize.py). A model trained so must be exported and scored so too.
"""
import runpy
import sys

from studies import models as study_models


def main() -> None:
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  args = sys.argv[1:]
  if args[0] == "--equalize":
    from studies import equalize  # pylint: disable=g-import-not-at-top
    equalize.register()
    args = args[1:]
  study_models.register()  # before the job module defines its --model enum
  module, sys.argv = args[0], args
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
