r"""cxr-monitor: how the clinic node's model does at this site, from its spool.

Usage:
  cxr-monitor --spool_dir=/var/lib/cxr-node                       # this month
  cxr-monitor --spool_dir=/var/lib/cxr-node --month=2026-11 --export=site_2026-11.json
  cxr-monitor --spool_dir=/var/lib/cxr-node --import_verdicts=ris_readings.csv

For the films the node read in the period (per model sha256: a new model's figures
start afresh), prints the figures on those with a reader's verdict, with 95% intervals,
beside the model's stated figures and a verdict on each (consistent, or worse than
stated when the whole interval lies below it), the share of films with a verdict, and
the drift alarms. --import_verdicts first appends readers' verdicts from a RIS export;
--export writes the report without patient data (JSON or CSV) for a registry. The
review page shows the same figures at /site while the node runs. docs/clinic_node.md
explains every figure and alarm.

TensorFlow-free, like cxr-node; it reads the spool while the node runs.
"""
import csv
import datetime
import json

from absl import app

from cxr_edge.core import cli
from cxr_edge.core import config_flags
from cxr_edge.edge import released
from cxr_edge.node import monitor_lib
from cxr_edge.node import node_config
from cxr_edge.node import verdicts as verdicts_lib

config_flags.define_flags(node_config.MonitorOptions,
                          required=node_config.MONITOR_REQUIRED)


def describe(report) -> str:
  """The report as the lines cxr-monitor prints."""
  out = [f"cxr-monitor: {report['since']} to {report['until']}: {report['films']} film(s) "
         f"read, {report['not_analysed']} not analysed"]
  for model in report["models"]:
    share = model["verdict_share"]
    name = model["name"] or "not a released model; give --model for its stated figures"
    out.append(f"model {model['model_sha256'][:12]} ({name}): {model['films']} film(s), "
               f"{model['flagged']} flagged, {model['with_verdict']} with a reader's "
               f"verdict" + (f" ({100 * share:.0f}%)" if share is not None else ""))
    out.append(f"  stated: {model['stated_source'] or 'none recorded'}")
    out.append(f"  {'figure':<44} {'at this site (95% interval)':<30} {'films':>5}  "
               f"{'stated':>7}  verdict")
    for name in monitor_lib.FIGURES:
      f = model[name]
      shown = lambda value, name=name: monitor_lib.format_figure(name, value, "-")
      value = (f"{shown(f['value'])} ({shown(f['ci95'][0])} to {shown(f['ci95'][1])})"
               if f["value"] is not None else "-")
      out.append(f"  {monitor_lib.FIGURE_NAMES[name]:<44} {value:<30} {f['n']:>5}  "
                 f"{shown(f['stated']):>7}  {f['verdict']}")
  out.append("alarms: " + ("none" if not report["alarms"] else ""))
  out += [f"  {a['rule']}: {a['detail']} ({a['why']})" for a in report["alarms"]]
  return "\n".join(out)


def main(argv):
  if argv[1:]:
    raise app.UsageError(f"unknown arguments: {' '.join(argv[1:])}")
  options = node_config.MonitorOptions(**config_flags.from_flags(node_config.MonitorOptions))
  if options.import_verdicts:
    by_accession, known = monitor_lib.records_by_accession(options.spool_dir)
    done = verdicts_lib.import_csv(verdicts_lib.Verdicts(options.spool_dir),
                                   options.import_verdicts, by_accession, known,
                                   options.reader)
    print(f"cxr-monitor: {done.recorded} verdict(s) recorded from {done.rows} row(s)"
          + (f"; {done.unmatched_count} row(s) match no film read here (first: "
             f"{', '.join(done.unmatched[:5])})" if done.unmatched_count else ""))
  today = datetime.date.today()
  if options.since:
    since, until = options.since, options.until or today.isoformat()
  else:
    since, until = monitor_lib.month_range(options.month or today.strftime("%Y-%m"))
  report = monitor_lib.site_report(options.spool_dir, since, until, _models(options))
  print(describe(report))
  if options.export:
    with open(options.export, "w", encoding="utf-8", newline="") as f:
      if options.export.endswith(".json"):
        json.dump(report, f, indent=1)
      else:
        rows = monitor_lib.export_rows(report)
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["figure"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"cxr-monitor: wrote {options.export}")


def _models(options):
  """{sha256: name, version, stated figures} of the released models and --model."""
  models = {}
  release = released.release()
  for name, entry in ((release or {}).get("files") or {}).items():
    models[entry["sha256"]] = {
        "name": f"released model v{release.get('version')} {name}",
        "version": str(release.get("version")),
        "stated": monitor_lib.stated_figures(entry["sha256"], {}, release)}
  if options.model:
    from cxr_edge.edge import runtime  # pylint: disable=g-import-not-at-top
    model = runtime.LiteModel(options.model)
    models[model.sha256] = {"name": model.info.headline(model.sha256),
                            "version": model.metadata.get("cxr_edge_version"),
                            "stated": monitor_lib.stated_figures(model.sha256,
                                                                 model.metadata, release)}
  return models


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=list(node_config.MONITOR_REQUIRED), prog="cxr-monitor",
          about=released.describe)


if __name__ == "__main__":
  run()
