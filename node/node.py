r"""cxr-node: the clinic node. Films in over DICOM, reports back to the PACS, a review page.

Usage:
  pip install ".[node]"       # in a checkout; "cxr-edge[node]" once published
  cxr-node --spool_dir=/var/lib/cxr-node \
      --port=11112 --ae_title=CXR_EDGE --allow_ae=PACS,XRAY1 \
      --forward=PACS@10.0.0.5:4242 --query=PACS@10.0.0.5:4242 --http_port=8080

  # Try it on one machine: a node on loopback, then send it a film with pynetdicom's
  # storescu and open http://127.0.0.1:8080/
  cxr-node --spool_dir=/tmp/node --host=127.0.0.1 --http_port=8080
  python -m pynetdicom storescu 127.0.0.1 11112 film.dcm -aec CXR_EDGE

Receives digital X-ray, computed radiography and secondary capture films (C-STORE; C-ECHO
answers), and acknowledges each only once it is on disk in --spool_dir. Each film is
predicted by the edge runtime as cxr-predict would (same windowing, plausibility guard,
threshold and --strict), then gets a DICOM Structured Report in its own study (a plain
summary, finding, p_pneumonia, threshold, model and version, warning, and the caution
that it is a triage aid, not for diagnostic use) and a result card, a Secondary Capture
with the finding in words (--noresult_card: none); with --overlay also a Secondary
Capture of the occlusion map. Reports are sent to --forward, and wait on disk while it
is down. With --query, the node also asks the PACS (C-FIND) at start and every
--catch_up_minutes for CR/DX films it never received (sent while it was down) and
retrieves them (C-GET, or C-MOVE with --retrieve=move); --nolisten makes it pull-only.
Readers' verdicts recorded on the review page give the model's figures at this site
(/site, and cxr-monitor), and drift or a stuck pipeline raises alarms (the log, the page,
--alert_command). Peers are held to limits (--acse_timeout, --network_timeout,
--idle_timeout, --max_associations_per_peer); a damaged spool file goes to quarantine/.
One JSON line per film in <spool_dir>/audit.jsonl (UIDs, model sha256, outcome, what
drift is watched on; no patient name or id).
After a crash or kill -9, a restart goes on where it stopped: every acknowledged film is
processed once. Stop it with Ctrl-C or SIGTERM.

TensorFlow-free: LiteRT, numpy, Pillow, pydicom, pynetdicom, highdicom.
"""
import logging
import signal
import threading

from absl import app

from cxr_edge.core import cli
from cxr_edge.core import config_flags
from cxr_edge.core import errors
from cxr_edge.edge import released
from cxr_edge.node import node_config

config_flags.define_flags(node_config.NodeOptions, required=node_config.REQUIRED)


def main(argv):
  if argv[1:]:
    raise app.UsageError(f"unknown arguments: {' '.join(argv[1:])}")
  options = node_config.NodeOptions(**config_flags.from_flags(node_config.NodeOptions))
  if options.requeue_dead_letters:
    from cxr_edge.node import spool as spool_lib  # pylint: disable=g-import-not-at-top
    names = spool_lib.Spool(options.spool_dir).requeue_dead_letters()
    print(f"cxr-node: {len(names)} dead letter(s) moved back to the outbox of "
          f"{options.spool_dir}")
    return
  try:
    from cxr_edge.node import node_lib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.CxrError(f"cxr-node needs the DICOM network libraries ({e.name} is "
                          "missing): pip install 'cxr-edge[node]'") from None
  if not cli.verbose():
    # pynetdicom logs every association at INFO; the node logs what matters itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
  node = node_lib.Node(options)
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  node.start()
  try:
    while not stop.wait(timeout=1.0) and not node.died.is_set():
      pass
  except KeyboardInterrupt:
    pass
  finally:
    node.stop()
  if node.death:  # a part could not go on: exit non-zero, so a service manager restarts it
    raise errors.CxrError(f"stopped because a part cannot go on ({node.death}); "
                          f"{node.processed} film(s) processed in this run")
  print(f"cxr-node: stopped; {node.processed} film(s) processed in this run")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=list(node_config.REQUIRED), prog="cxr-node",
          about=released.describe)


if __name__ == "__main__":
  run()
