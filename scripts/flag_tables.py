r"""Writes BUILD.md's flag tables that are derived from the jobs' configs.

Usage (from the repository root, after changing an option in a config):
  .venv/bin/python -m scripts.flag_tables

Each derived table stands between `<!-- flags: JOB -->` and `<!-- /flags -->` in
BUILD.md; tests/build_doc_test.py fails when one differs from its config.
"""
import os
import re

from cxr_edge.core import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_MD = os.path.join(ROOT, "BUILD.md")


def tables():
  """{job: its table}, for every job whose flags come from configs."""
  # The configs, not the jobs: two jobs' flags cannot live in one process.
  from cxr_edge.model import train_config  # pylint: disable=g-import-not-at-top
  from cxr_edge.pipeline import convert_config  # pylint: disable=g-import-not-at-top
  from cxr_edge.node import node_config  # pylint: disable=g-import-not-at-top
  return {
      "cxr-convert": config_flags.markdown_table(convert_config.OPTION_CLASSES,
                                                 convert_config.REQUIRED),
      "cxr-train": config_flags.markdown_table(train_config.OPTION_CLASSES,
                                               train_config.REQUIRED),
      "cxr-node": config_flags.markdown_table((node_config.NodeOptions,),
                                              node_config.REQUIRED),
      "cxr-monitor": config_flags.markdown_table((node_config.MonitorOptions,),
                                                 node_config.MONITOR_REQUIRED)}


def block(job, table):
  return f"<!-- flags: {job} -->\n{table}\n<!-- /flags -->"


def main():
  text = open(BUILD_MD, encoding="utf-8").read()
  for job, table in tables().items():
    pattern = re.compile(rf"<!-- flags: {re.escape(job)} -->\n.*?<!-- /flags -->", re.S)
    if not pattern.search(text):
      raise SystemExit(f"BUILD.md has no '<!-- flags: {job} -->' block")
    text = pattern.sub(lambda _: block(job, table), text)
  with open(BUILD_MD, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"BUILD.md: {len(tables())} flag table(s) written")


if __name__ == "__main__":
  main()
