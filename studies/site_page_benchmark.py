r"""The review page's time to answer with a year of films in the spool.

Usage:
  .venv/bin/python -m studies.site_page_benchmark --films=100000

Writes a synthetic spool (--films records in results/, as many audit lines, a verdict on
one film in ten), starts the review page with the site monitor over it, and times each
page: the worklist (/), the site figures (/site, /site.json) and /status.json; each
asked five times, the median printed, first call apart (it reads the audit log whole;
later calls read only what was appended), and the memory the monitor's copy of the audit
log holds. Baseline in the same run: the same pages over a spool of 1,000 films.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request

import numpy as np

from cxr_edge.core import site_log
from cxr_edge.node import monitor_lib
from cxr_edge.node import review
from cxr_edge.node import spool as spool_lib

PAGES = ("/", "/site", "/site.json", "/status.json")


def make_spool(root: str, films: int) -> None:
  spool = spool_lib.Spool(root)
  rng = np.random.default_rng(0)
  start = time.time_ns() - films * 60 * 10**9
  with open(os.path.join(root, site_log.AUDIT_NAME), "w", encoding="utf-8") as audit, \
      open(os.path.join(root, site_log.VERDICTS_NAME), "w", encoding="utf-8") as verdicts:
    for k in range(films):
      uid = f"2.25.{10**6 + k}"
      p = float(rng.beta(1, 1))
      prediction = "PNEUMONIA" if p >= 0.375 else "NORMAL"
      line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(
          (start + k * 60 * 10**9) / 1e9)), "sop_instance_uid": uid, "model_sha256": "a" * 64,
          "prediction": prediction, "p_pneumonia": p, "threshold": 0.375, "warning": None,
          "error": None, "inputs": {"manufacturer": "ACME", "pixel_mean": 120.0}}
      audit.write(json.dumps(line) + "\n")
      record = {**line, "received_ns": start + k * 60 * 10**9, "patient_name": "Test^P",
                "patient_id": f"P{k}", "accession_number": f"A{k}"}
      with open(spool.path("results", uid + ".json"), "w", encoding="utf-8") as f:
        json.dump(record, f)
      if k % 10 == 0:
        verdicts.write(json.dumps({"sop_instance_uid": uid, "pneumonia": bool(
            rng.random() < p), "subtype": None, "reader": "bench", "time": line["time"],
            "source": "page"}) + "\n")


def resident_mb() -> float:
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


def time_pages(root: str):
  spool = spool_lib.Spool(root)
  monitor = monitor_lib.Monitor(root, "a" * 64, {}, status=lambda: review.status(spool,
                                                                                 False))
  before = resident_mb()
  monitor.audit.lines()  # what the monitor keeps of the audit log, measured alone
  held = resident_mb() - before
  server = review.ReviewServer(spool, "127.0.0.1", 0, monitor=monitor)
  server.start()
  out = {}
  try:
    for page in PAGES:
      url = f"http://127.0.0.1:{server.port}{page}"
      times = []
      for _ in range(6):
        started = time.perf_counter()
        urllib.request.urlopen(url, timeout=600).read()
        times.append(time.perf_counter() - started)
      out[page] = {"first_ms": round(times[0] * 1000, 1),
                   "median_ms": round(statistics.median(times[1:]) * 1000, 1)}
  finally:
    server.stop()
  out["audit_held_mb"] = round(held, 1)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--films", type=int, default=100000)
  args = parser.parse_args()
  results = {}
  for films in (1000, args.films):
    with tempfile.TemporaryDirectory() as root:
      started = time.perf_counter()
      make_spool(root, films)
      print(f"site_page_benchmark: {films} films written in "
            f"{time.perf_counter() - started:.0f} s", flush=True)
      results[films] = time_pages(root)
  print(json.dumps(results, indent=1))
  print("| page | 1,000 films: first / then (ms) | "
        f"{args.films:,} films: first / then (ms) | ratio (then) |")
  print("| --- | --- | --- | --- |")
  small, large = results[1000], results[args.films]
  for page in PAGES:
    print(f"| `{page}` | {small[page]['first_ms']} / {small[page]['median_ms']} | "
          f"{large[page]['first_ms']} / {large[page]['median_ms']} | "
          f"{large[page]['median_ms'] / max(small[page]['median_ms'], 0.1):.1f}x |")
  print(f"The monitor holds the audit log of {args.films:,} films in "
        f"{large['audit_held_mb']} MB (resident memory it added).")


if __name__ == "__main__":
  main()
