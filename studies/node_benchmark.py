r"""cxr-node through a real PACS: throughput (result card on and off), catch-up, latency,
memory, kill -9, a PACS outage.

Usage:
  .venv/bin/python -m studies.node_benchmark --films=200 --output=/tmp/node_benchmark.json

Needs Debian's orthanc. The films are the embedded sample's (data/sample), each resized
to --side pixels (default 2048, a clinic film's size; the sample's are 224) and wrapped
as a 12-bit digital X-ray DICOM (8 MiB at 2048), in 20 studies. Every phase starts a
fresh Orthanc (or two) and a fresh node process (python -m cxr_edge.node.node), so
nothing carries over; the node forwards its reports back to Orthanc.

Phases:
  1 and 4 associations: Orthanc sends all films to the node with one store job, then
    with four concurrent jobs (four associations), each film getting its SR and result
    card; "1-nocard" is one association with --noresult_card. Films per minute: from the
    store request to the last report stored in Orthanc. The card's size: the median of
    the node's card files. Latency per film: from the node's
    receipt (the film's arrival in its spool) to Orthanc's acknowledgement of its report
    (the node's forwarded.jsonl). The node's own time per film: reading, predicting and
    writing its report (processing_ms in its records). Peak memory: the node process's
    VmHWM. The baseline: the same films through the edge runtime alone, in one process
    (cxr-predict's work per film), measured in the same run; node_over_predict is the
    node's own time per film over it.
  catchup: every film is stored in Orthanc while no node runs (nothing routes them: all
    missed), then a node starts with --query; time from its start (process start and
    model load included) to the last report and card in Orthanc. catchup_over_push: its
    films per minute over phase 1's, in the same run.
  kill -9: the node is SIGKILLed once a third of the films have results, started again,
    and Orthanc's store job sent again (as an operator or a routing retry would). Lost:
    films without a report in Orthanc; duplicated: films with more than one audit line.
  PACS down: the destination Orthanc is stopped before the films are sent and the node
    is restarted while it is down; then the destination comes back. Lost: films without
    a report in it at the end.
"""
import argparse
import datetime
import glob
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from cxr_edge.node import spool as spool_lib
from scripts import orthanc
from tests import dicom_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")


def sample_films(count: int, side: int) -> List[bytes]:
  """The sample's first `count` films (both classes, interleaved) as 12-bit DX DICOM,
  resized to side x side (0: as they are, 224 px)."""
  paths = [sorted(glob.glob(os.path.join(SAMPLE, label, "*.jpeg")))
           for label in ("NORMAL", "PNEUMONIA")]
  interleaved = [p for pair in zip(*paths) for p in pair]
  interleaved += sorted(set(sum(paths, [])) - set(interleaved))
  films = []
  for k, path in enumerate(interleaved[:count]):
    with Image.open(path) as im:
      im = im.convert("L")
      if side:
        im = im.resize((side, side), Image.BILINEAR)
      pixels = np.asarray(im, np.uint16) * 16  # 8 -> 12 bits stored
    study = k % 20
    films.append(dicom_files.encode_dicom(pixels, bits=12, window=(2048, 4096), attributes={
        "StudyInstanceUID": f"2.25.{900000 + study}", "SeriesInstanceUID":
        f"2.25.{800000 + study}", "SOPInstanceUID": f"2.25.{700000 + k}",
        "PatientName": f"Bench^{study}", "PatientID": f"B{study}",
        # Today: catch-up's first window looks at today's and yesterday's studies.
        "StudyDate": datetime.date.today().strftime("%Y%m%d"),
        "StudyTime": "090000", "InstanceNumber": k + 1, "PatientOrientation": ["L", "F"]}))
  # encode_dicom names the file meta's instance from the pixels; keep them in step.
  return [dicom_files.rewritten(f, _same_meta) for f in films]


def _same_meta(ds) -> None:
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


class NodeProcess:
  """python -m cxr_edge.node.node with a spool, as an installed node runs."""

  def __init__(self, model: str, spool: str, port: int, forward: str, log: str,
               extra: Sequence[str] = ()):
    self.args_of = (model, spool, port, forward, log, extra)  # to start it again
    self.args = [sys.executable, "-m", "cxr_edge.node.node", f"--model={model}",
                 f"--spool_dir={spool}", f"--port={port}", "--host=127.0.0.1",
                 f"--forward={forward}", "--allow_ae=ORTHANC", *extra]
    self.port, self.log = port, log
    self.process = None

  def start(self) -> "NodeProcess":
    from pynetdicom import AE  # pylint: disable=g-import-not-at-top
    from pynetdicom import sop_class  # pylint: disable=g-import-not-at-top
    with open(self.log, "ab") as log:
      self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT)
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(sop_class.Verification)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"the node exited; see {self.log}")
      assoc = ae.associate("127.0.0.1", self.port, ae_title="CXR_EDGE")
      if assoc.is_established:
        assoc.release()
        return self
      time.sleep(0.2)
    raise RuntimeError("the node did not answer C-ECHO")

  def peak_rss_mb(self) -> float:
    with open(f"/proc/{self.process.pid}/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
    return float("nan")

  def kill(self) -> None:
    self.process.send_signal(signal.SIGKILL)
    self.process.wait()

  def stop(self) -> None:
    self.process.send_signal(signal.SIGTERM)
    self.process.wait(timeout=300)


def _routed_node(model: str, work: str, source: orthanc.Orthanc,
                 destination: orthanc.Orthanc, extra: Sequence[str] = ()) -> NodeProcess:
  """A node in work/spool forwarding to `destination`, known to `source` as "cxr"."""
  port = orthanc.free_port()
  node = NodeProcess(model, os.path.join(work, "spool"), port,
                     f"{destination.ae_title}@127.0.0.1:{destination.dicom_port}",
                     os.path.join(work, "node.log"), extra).start()
  source.add_modality("cxr", "CXR_EDGE", port)
  return node


def _wait(condition, timeout: float, what: str) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    time.sleep(0.25)
  raise RuntimeError(f"timed out waiting for {what}")


def _reports_in(pacs: orthanc.Orthanc) -> int:
  return pacs.get("/statistics")["CountInstances"]


def _results(spool: str) -> List[Dict]:
  """The node's film records."""
  records = []
  for path in glob.glob(os.path.join(spool, "results", "*.json")):
    with open(path, encoding="utf-8") as f:
      records.append(json.load(f))
  return records


def _latencies(spool: str, records: List[Dict]) -> List[float]:
  """Seconds from each film's arrival to its report's acknowledgement."""
  received = {r["sop_instance_uid"]: r["received_ns"] / 1e9 for r in records}
  out = []
  for line in spool_lib.iter_lines(os.path.join(spool, spool_lib.FORWARDED_NAME)):
    stored = datetime.datetime.fromisoformat(line["time"]).timestamp()
    out.append(stored - received[line["film_uid"]])
  return out


def throughput(model: str, films: List[bytes], associations: int, work: str,
               card: bool = True) -> Dict:
  """Orthanc -> node -> Orthanc with `associations` concurrent store jobs."""
  with orthanc.Orthanc(os.path.join(work, "orthanc"), concurrent_jobs=associations) as pacs:
    ids = [pacs.upload(f) for f in films]
    node = _routed_node(model, work, pacs, pacs, () if card else ("--noresult_card",))
    start = time.monotonic()
    parts = [ids[k::associations] for k in range(associations)]
    jobs = [pacs.store("cxr", part, asynchronous=True)["ID"] for part in parts]
    # Each film, its SR and (with the card) its result card.
    _wait(lambda: _reports_in(pacs) >= (3 if card else 2) * len(films), 1800,
          "the reports")
    elapsed = time.monotonic() - start
    assert all(pacs.job_state(j) == "Success" for j in jobs)
    peak = node.peak_rss_mb()
    node.stop()
  records = _results(os.path.join(work, "spool"))
  latency = _latencies(os.path.join(work, "spool"), records)
  own = [r.get("processing_ms", float("nan")) for r in records]
  return {"associations": associations, "films": len(films), "seconds": round(elapsed, 1),
          "films_per_minute": round(len(films) / elapsed * 60, 1),
          "latency_p50_s": round(float(np.percentile(latency, 50)), 2),
          "latency_p95_s": round(float(np.percentile(latency, 95)), 2),
          "node_ms_per_film_p50": round(float(np.median(own)), 1),
          "node_peak_rss_mb": round(peak, 1), "result_card": card,
          **(_card_sizes(os.path.join(work, "spool")) if card else {})}


def _card_sizes(spool: str) -> Dict:
  """The result cards' file size (median) and pixel size, as the node sent them."""
  import pydicom  # pylint: disable=g-import-not-at-top
  paths = glob.glob(os.path.join(spool, "reports", "*.card.dcm"))
  card = pydicom.dcmread(paths[0], stop_before_pixels=True)
  return {"card_kb_p50": round(float(np.median([os.path.getsize(p) for p in paths])) / 1024,
                               1), "card_pixels": f"{card.Columns}x{card.Rows}"}


def catch_up(model: str, films: List[bytes], work: str) -> Dict:
  """Films stored in Orthanc while no node ran, then a node started with --query."""
  with orthanc.Orthanc(os.path.join(work, "orthanc")) as pacs:
    ids = [pacs.upload(f) for f in films]
    del ids  # nothing routes them: the node was down for all
    port = orthanc.free_port()
    pacs.add_modality("cxr", "CXR_EDGE", port)  # Orthanc answers only AEs it knows
    address = f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"
    start = time.monotonic()
    node = NodeProcess(model, os.path.join(work, "spool"), port, address,
                       os.path.join(work, "node.log"), (f"--query={address}",)).start()
    _wait(lambda: _reports_in(pacs) >= 3 * len(films), 1800, "the reports")
    elapsed = time.monotonic() - start
    node.stop()
    sources = _sources(pacs)
  audit = _audit_counts(os.path.join(work, "spool"))
  return {"films": len(films), "seconds": round(elapsed, 1),
          "films_per_minute": round(len(films) / elapsed * 60, 1),
          "lost": len({f"2.25.{700000 + k}" for k in range(len(films))} - set(sources)),
          "duplicated": sum(1 for n in audit.values() if n > 1),
          "reports_per_film_in_pacs": sorted(set(sources.values()))}


def _audit_counts(spool: str) -> Dict[str, int]:
  counts: Dict[str, int] = {}
  for line in spool_lib.iter_lines(os.path.join(spool, spool_lib.AUDIT_NAME)):
    counts[line["sop_instance_uid"]] = counts.get(line["sop_instance_uid"], 0) + 1
  return counts


def _sources(pacs: orthanc.Orthanc) -> Dict[str, int]:
  """How many reports in `pacs` refer to each film."""
  import pydicom  # pylint: disable=g-import-not-at-top
  from cxr_edge.node import report  # pylint: disable=g-import-not-at-top
  counts: Dict[str, int] = {}
  for instance in pacs.instances():
    if pacs.modality_of(instance) != "SR":
      continue
    source = report.describe(pydicom.dcmread(io.BytesIO(pacs.file(instance))))["source"]
    counts[source] = counts.get(source, 0) + 1
  return counts


def kill_9(model: str, films: List[bytes], work: str) -> Dict:
  """SIGKILL mid-stream, restart, the store job sent again."""
  spool = os.path.join(work, "spool")
  with orthanc.Orthanc(os.path.join(work, "orthanc")) as pacs:
    ids = [pacs.upload(f) for f in films]
    node = _routed_node(model, work, pacs, pacs)
    pacs.store("cxr", ids, asynchronous=True)
    _wait(lambda: len(os.listdir(os.path.join(spool, "results"))) >= len(films) // 3, 1800,
          "a third of the results")
    node.kill()
    killed_at = len(os.listdir(os.path.join(spool, "results")))
    queued_at_kill = len(os.listdir(os.path.join(spool, "incoming")))
    node = NodeProcess(*node.args_of).start()
    pacs.store("cxr", ids, asynchronous=True)
    _wait(lambda: len(_audit_counts(spool)) >= len(films) and
          not os.listdir(os.path.join(spool, "outbox")), 1800, "every film")
    node.stop()
    sources = _sources(pacs)
  audit = _audit_counts(spool)
  uids = {f"2.25.{700000 + k}" for k in range(len(films))}
  return {"films": len(films), "results_at_kill": killed_at,
          "queued_at_kill": queued_at_kill,
          "lost": len(uids - set(sources)),
          "duplicated": sum(1 for n in audit.values() if n > 1),
          "reports_per_film_in_pacs": sorted(set(sources.values()))}


def pacs_down(model: str, films: List[bytes], work: str) -> Dict:
  """The destination is down while films arrive and the node restarts; then returns."""
  spool = os.path.join(work, "spool")
  destination = orthanc.Orthanc(os.path.join(work, "destination"), ae_title="DEST")
  with orthanc.Orthanc(os.path.join(work, "source")) as source:
    ids = [source.upload(f) for f in films]
    node = _routed_node(model, work, source, destination)
    source.store("cxr", ids)
    _wait(lambda: len(os.listdir(os.path.join(spool, "results"))) >= len(films), 1800,
          "the results")
    waiting_before_restart = sum(n.endswith(".dcm")  # not their .sha256 files
                                 for n in os.listdir(os.path.join(spool, "outbox")))
    node.stop()
    node = NodeProcess(*node.args_of).start()
    destination.start()
    _wait(lambda: not any(n.endswith(".dcm") for n in os.listdir(
        os.path.join(spool, "outbox"))), 1800, "the outbox")
    node.stop()
    sources = _sources(destination)
    destination.stop()
  return {"films": len(films), "reports_waiting_while_down": waiting_before_restart,
          "lost": len({f"2.25.{700000 + k}" for k in range(len(films))} - set(sources)),
          "reports_per_film_in_pacs": sorted(set(sources.values()))}


def predict_baseline(model: str, films: List[bytes]) -> Dict:
  """The same films through the edge runtime alone (what cxr-predict does per film), in
  this process: the baseline the node's own time per film is compared with. Also the
  windowing step as it was before the runtime took the windowed pixels directly (a
  lossless PNG encoded and decoded again, as cxr-convert stores films), on the same
  films in the same run, and whether both give the same pixels."""
  from cxr_edge.core import film  # pylint: disable=g-import-not-at-top
  from cxr_edge.edge import runtime  # pylint: disable=g-import-not-at-top
  lite = runtime.LiteModel(model)
  times, direct, roundtrip, same = [], [], [], True
  for data in films:
    start = time.perf_counter()
    lite.predict_bytes(data)
    times.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    pixels = runtime.film_gray(data)
    direct.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    decoded = runtime.decode_grayscale(film.read_film(data).encoded)
    roundtrip.append((time.perf_counter() - start) * 1000)
    same = same and np.array_equal(pixels, decoded)
  return {"predict_ms_per_film_p50": round(float(np.median(times)), 1),
          "windowing_ms_p50": round(float(np.median(direct)), 1),
          "windowing_via_png_ms_p50": round(float(np.median(roundtrip)), 1),
          "windowing_via_png_same_pixels": same}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="default: the released int8 model")
  parser.add_argument("--films", type=int, default=200)
  parser.add_argument("--side", type=int, default=2048,
                      help="film side in pixels: a clinic's DX film is 2000-3000 px; the "
                      "sample's are 224 (0 keeps them)")
  parser.add_argument("--output")
  parser.add_argument("--phases", default="1,1-nocard,4,catchup,kill,down",
                      help="comma-separated; empty: the baseline only")
  args = parser.parse_args()
  if orthanc.binary() is None:
    sys.exit("node_benchmark: Orthanc is not installed (apt-get install orthanc)")
  if not args.model:
    from cxr_edge.edge import released  # pylint: disable=g-import-not-at-top
    args.model = released.path()
  films = sample_films(args.films, args.side)
  results = {"films": len(films), "mean_film_mb": round(
      sum(len(f) for f in films) / len(films) / 2**20, 2), "side": args.side,
             "cpus": os.cpu_count()}
  results["baseline"] = predict_baseline(args.model, films)
  with tempfile.TemporaryDirectory() as work:
    for phase in filter(None, args.phases.split(",")):
      folder = os.path.join(work, phase)
      os.makedirs(folder)
      print(f"node_benchmark: phase {phase}", file=sys.stderr, flush=True)
      if phase in ("1", "4", "1-nocard"):
        results[f"associations_{phase}"] = run = throughput(
            args.model, films, int(phase[0]), folder, card=phase != "1-nocard")
        run["node_over_predict"] = round(run["node_ms_per_film_p50"] / results[
            "baseline"]["predict_ms_per_film_p50"], 2)
      elif phase == "catchup":
        results["catch_up"] = run = catch_up(args.model, films, folder)
        if "associations_1" in results:
          run["catchup_over_push"] = round(run["films_per_minute"] / results[
              "associations_1"]["films_per_minute"], 2)
      elif phase == "kill":
        results["kill_9"] = kill_9(args.model, films, folder)
      elif phase == "down":
        results["pacs_down"] = pacs_down(args.model, films, folder)
      print(json.dumps(results, indent=1), file=sys.stderr, flush=True)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
