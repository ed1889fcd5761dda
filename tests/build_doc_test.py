"""BUILD.md and the docs say what the code does: the derived flag tables match the jobs'
configs, and the clinic node's doc states every alarm rule as the code does."""
import os
import re

import pytest

from scripts import flag_tables
from tests.conftest import ROOT


def test_derived_flag_tables_match_the_configs():
  text = open(os.path.join(ROOT, "BUILD.md"), encoding="utf-8").read()
  for job, table in flag_tables.tables().items():
    found = re.search(rf"<!-- flags: {re.escape(job)} -->\n(.*?)\n<!-- /flags -->", text, re.S)
    assert found, f"BUILD.md has no flag table block for {job}"
    assert found.group(1) == table, (f"BUILD.md's {job} flag table is stale: run "
                                     "python -m scripts.flag_tables")


def test_every_train_flag_is_in_the_table_with_its_default():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tests.conftest import job  # pylint: disable=g-import-not-at-top
  train = job("cxr_edge.model.train")
  table = flag_tables.tables()["cxr-train"]
  for flag in flags.FLAGS.get_flags_for_module(train.__name__):
    row = next((r for r in table.splitlines() if r.startswith(f"| `--{flag.name}` |")), None)
    assert row, flag.name
    if flag.default is not None and flag.name not in ("data_dir", "model_dir"):
      shown = (",".join(flag.default) if isinstance(flag.default, list)
               else str(flag.default))
      assert f"`{shown}`" in row, (flag.name, row)


def test_the_clinic_node_doc_states_every_alarm_rule_as_the_code_does():
  pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
  from cxr_edge.node import monitor_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "docs", "clinic_node.md"), encoding="utf-8") as f:
    doc = f.read()
  for rule, text in monitor_lib.RULES.items():
    assert f"(`{rule}`) | {text} |" in doc, rule
