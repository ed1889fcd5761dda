"""cxr-node's options, defined once: its flags and BUILD.md's flag table come from these
fields (core/config_flags.py). Parsing of the composite values (a forwarding
destination, an AE title) lives here too, so a mistyped flag is one line before
anything starts."""
import dataclasses
import datetime
import re
import urllib.parse
from typing import Optional, Tuple

from cxr_edge.core import intended_use
from cxr_edge.core import schema
from cxr_edge.core.config_flags import option
from cxr_edge.core.errors import ConfigError
from cxr_edge.node import limits as limits_lib

# The largest dataset a C-STORE may send: the largest file any job reads.
MAX_DATASET_BYTES = schema.MAX_FILE_BYTES

# An AE title (PS3.5 6.2, VR AE): 1 to 16 characters of the default repertoire, no
# backslash or control characters; spaces are not significant at either end.
_AE_PATTERN = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def ae_title(text: str) -> str:
  """A checked AE title, without its insignificant spaces.

  Raises:
    ConfigError: empty, longer than 16 characters, or holding a backslash or control
      character.
  """
  title = str(text).strip()
  if not _AE_PATTERN.fullmatch(title):
    raise ConfigError(f"{text!r} is not an AE title (1-16 printable characters, no "
                      "backslash)")
  return title


@dataclasses.dataclass(frozen=True)
class Destination:
  """Where reports are forwarded: a DICOM node's AE title, host and port."""
  ae_title: str
  host: str
  port: int

  @classmethod
  def parse(cls, text: str) -> "Destination":
    """AE@host:port (host may be a name, an IPv4 address or a bracketed IPv6 one).

    Raises:
      ConfigError: not of that form, or a port outside 1-65535.
    """
    match = re.fullmatch(r"([^@]+)@(\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+):([0-9]{1,5})", text or "")
    if not match:
      raise ConfigError(f"{text!r} is not AE@host:port (e.g. PACS@10.0.0.5:4242)")
    port = int(match.group(3))
    if not 0 < port < 65536:
      raise ConfigError(f"port {port} in {text!r} is outside 1-65535")
    return cls(ae_title(match.group(1)), match.group(2).strip("[]"), port)

  def __str__(self) -> str:
    return f"{self.ae_title}@{self.host}:{self.port}"


def _allow_list(text: str) -> Tuple[str, ...]:
  return tuple(ae_title(t) for t in str(text).split(",") if t.strip())


def public_origin(text: str) -> str:
  """An http(s) URL's origin, scheme://host[:port] in lower case, the default port left
  out, as a browser sends it in Origin.

  Raises:
    ValueError: not an http or https URL with a host, or one with a path, query or user.
  """
  parts = urllib.parse.urlsplit(str(text).strip())
  try:
    port = parts.port
  except ValueError:
    port = -1
  if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
      or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username):
    raise ValueError(f"{text!r} is not the page's public address, http(s)://host[:port] "
                     "(e.g. https://pacs-ai.hospital.example)")
  host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
  default = {"http": 80, "https": 443}[parts.scheme]
  return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


@dataclasses.dataclass(frozen=True)
class NodeOptions:
  """What the clinic node listens on, runs, writes and forwards."""
  spool_dir: str = option(
      help="The node's own folder: the queue of received films, results, reports, the "
      "audit log. One node per folder (a second one is refused).")
  model: Optional[str] = option(
      None, help="A .tflite exported by cxr-export (or calibrated by cxr-calibrate): its "
      "embedded threshold decides, as in cxr-predict. Default: the released int8 model "
      "shipped with cxr-edge.")
  allow_smoke_model: bool = option(
      False, help="Run a smoke-test model (one trained on a few hundred films, e.g. by "
      "scripts/run.sh), which is otherwise refused: its every report and the review page "
      "then say it is for trying the software, not for films of patients.")
  port: int = option(11112, lower_bound=0, upper_bound=65535,
                     help="DICOM port to listen on (0: any free port, logged).")
  host: str = option("0.0.0.0", help="Address the DICOM port listens on (the X-ray unit "
                     "and the PACS connect to it; use --allow_ae to say which).")
  ae_title: str = option("CXR_EDGE",
                         help="This node's AE title; associations calling another are "
                         "rejected.")
  allow_ae: Tuple[str, ...] = option(
      (), parse=_allow_list,
      help="Calling AE titles allowed to send (comma-separated, e.g. PACS,XRAY1); empty: "
      "any. Others are rejected at association.")
  forward: Optional[str] = option(
      None, help="Send each report to this DICOM node, AE@host:port (e.g. "
      "PACS@10.0.0.5:4242). While it is unreachable reports wait on disk, across restarts.")
  forward_ae_title: Optional[str] = option(
      None, help="The calling AE title used towards --forward; default: --ae_title.")
  forward_refusals: int = option(
      3, lower_bound=1, help="A report the destination refuses this many times (a failure "
      "status, not an outage) goes to dead_letter/ in the spool with the reason.")
  query: Optional[str] = option(
      None, help="Catch up with this PACS, AE@host:port: at start and every "
      "--catch_up_minutes, ask it (C-FIND) for CR/DX chest films since the last round and "
      "retrieve those the node never received (e.g. sent while it was down).")
  query_ae_title: Optional[str] = option(
      None, help="The calling AE title used towards --query (the PACS must know it); "
      "default: --ae_title.")
  retrieve: str = option(
      "get", choices=("get", "move"), help="How catch-up retrieves a film: get (C-GET: it "
      "comes back on the node's own association; the PACS needs no address of the node) "
      "or move (C-MOVE to --ae_title, for a PACS without C-GET; it must know the node's "
      "address).")
  catch_up_minutes: float = option(
      10.0, lower_bound=0.0, help="Minutes between catch-up rounds (0: only when the node "
      "starts).")
  catch_up_days: int = option(
      1, lower_bound=0, help="On first start with --query (no checkpoint yet), look back "
      "this many days before today's studies; later rounds start from the checkpoint.")
  catch_up_max_days: int = option(
      30, lower_bound=1, help="The furthest back a catch-up round looks: a checkpoint "
      "older than this (or damaged) is said in the log and this window used instead.")
  catch_up_batch: int = option(
      100, lower_bound=1, help="Films one catch-up round retrieves at most; the next batch "
      "follows once the node has read these.")
  listen: bool = option(
      True, help="Listen for films pushed to --port (--nolisten: pull-only, every film "
      "comes by --query's catch-up with C-GET).")
  alert_command: Optional[str] = option(
      None, help="Run this command when an alarm (drift of the films or the model's "
      "outputs, or a stuck pipeline) is raised or cleared, with the alarm as JSON on its "
      "standard input, e.g. a script that mails it; the log and the review page say it "
      "anyway.")
  check_minutes: float = option(
      5.0, lower_bound=0.1, help="Minutes between alarm checks.")
  http_port: Optional[int] = option(
      None, lower_bound=0, upper_bound=65535,
      help="Serve the review page on this port (0: any free port, logged); default: none.")
  http_host: str = option(
      "127.0.0.1", help="Address the review page listens on. Anything but loopback "
      "requires a token (--http_token_file, else one is made and its file logged).")
  http_timeout: float = option(
      10.0, lower_bound=0.1, help="Seconds the review page waits for each part of a "
      "request (three times this for all of it) before closing the connection.")
  http_token_file: Optional[str] = option(
      None, help="A file holding the review page's access token (first line).")
  public_url: Optional[str] = option(
      None, parse=lambda text: public_origin(text) if text else None,
      help="The review page's address as browsers reach it through a reverse proxy (e.g. "
      "https://pacs-ai.hospital.example): its forms are then accepted from that origin "
      "as well as from the page's own, and from nothing else.")
  strict: bool = option(
      False, help="Films that would be analysed with a warning (outside the model's own "
      "intended use, inside a use widened by --widen_intended_use) are not: their report "
      "says NOT ANALYSED and why.")
  intended_ages: Tuple[int, ...] = option(
      (), parse=lambda text: intended_use.parse_age_range(text) or (),
      help="YOUNGEST,OLDEST: the patients' ages in whole years this site analyses (from "
      "PatientAge, or birth and study dates); empty: the model's intended use (--info). "
      "Narrower is yours to set; wider needs --widen_intended_use.")
  intended_views: Tuple[str, ...] = option(
      (), parse=lambda text: tuple(v.strip().upper() for v in str(text).split(",")
                                   if v.strip()),
      help="ViewPosition values analysed (e.g. PA); empty: the model's. Others need "
      "--widen_intended_use.")
  widen_intended_use: bool = option(
      False, help="Allow --intended_ages or --intended_views wider than the model's "
      "intended use: every report and record then says so, and a film outside the "
      "model's own use is analysed with that warning first.")
  result_card: bool = option(
      True, help="Also send each film's result card: a Secondary Capture picture in the "
      "film's study with its thumbnail and the finding in words, for viewers that show "
      "images but not Structured Reports (--noresult_card: the SR only).")
  overlay: bool = option(
      False, help="Also send an occlusion map of each analysed film as a Secondary "
      "Capture (about 200 model runs a film: slower).")
  threads: int = option(1, lower_bound=1, help="Interpreter threads.")
  max_associations: int = option(
      8, lower_bound=1, help="Associations served at once; more are rejected as "
      "\"transient, local limit exceeded\" (the sender retries).")
  max_associations_per_peer: int = option(
      4, lower_bound=1, help="Associations served at once from one address (and "
      "connections from it not yet associated): one busy or hostile host cannot hold "
      "every slot.")
  acse_timeout: float = option(
      30.0, lower_bound=0.1, help="Seconds a connection has to ask for its association, "
      "whole; a peer that connects and waits, or drips its request, is dropped. Also how "
      "long the forwarder waits for the PACS's answer to its own request.")
  network_timeout: float = option(
      60.0, lower_bound=0.1, help="Seconds a peer may be silent, or take to send one PDU, "
      "before its connection is dropped (and the forwarder's, if the PACS is).")
  idle_timeout: float = option(
      120.0, lower_bound=0.1, help="An association that sends no film for this many "
      "seconds is dropped, however many C-ECHOs keep it busy: it gives its slot back.")
  dimse_timeout: float = option(
      30.0, lower_bound=0.1, help="Seconds the forwarder waits for the PACS's answer to "
      "each report it sends before counting the PACS unavailable.")
  keep_days: float = option(
      30.0, lower_bound=0.0,
      help="Remove films, reports and overlays from the spool this many days after they "
      "were written (the node is not an archive; the PACS keeps them); records and the "
      "audit log stay. 0 keeps everything.")
  requeue_dead_letters: bool = option(
      False, help="Move every report in the spool's dead_letter/ back to the outbox (after "
      "fixing what the destination refused them for), print how many, and exit; a running "
      "node then sends them.")
  min_free_mb: int = option(
      512, lower_bound=0, help="Refuse films (status A700, out of resources: the sender "
      "keeps and retries them) while the spool's disk has less free space than this.")

  @property
  def limits(self) -> limits_lib.Limits:
    """What one DICOM peer may hold of the receiver (node/limits.py)."""
    return limits_lib.Limits(
        acse_timeout=self.acse_timeout, network_timeout=self.network_timeout,
        idle_timeout=self.idle_timeout, max_associations=self.max_associations,
        max_per_peer=self.max_associations_per_peer, max_dataset_bytes=MAX_DATASET_BYTES)

  @property
  def query_pacs(self) -> Optional[Destination]:
    return Destination.parse(self.query) if self.query else None

  @property
  def destination(self) -> Optional[Destination]:
    return Destination.parse(self.forward) if self.forward else None

  def __post_init__(self):
    """Checks what one flag's bounds cannot (AE titles, a destination's form, flags
    that need each other).

    Raises:
      ConfigError: a malformed AE title or AE@host:port, or --nolisten without --query
        or with --retrieve=move.
    """
    object.__setattr__(self, "ae_title", ae_title(self.ae_title))
    if self.forward:
      Destination.parse(self.forward)
    if self.forward_ae_title:
      ae_title(self.forward_ae_title)
    if self.query:
      Destination.parse(self.query)
    if self.query_ae_title:
      ae_title(self.query_ae_title)
    if not self.listen and not self.query:
      raise ConfigError("--nolisten needs --query: with neither, no film can arrive")
    if not self.listen and self.retrieve == "move":
      raise ConfigError("--retrieve=move needs the node to listen (the PACS sends the "
                        "films to it): drop --nolisten, or use --retrieve=get")


REQUIRED = ("spool_dir",)


def _month(text: Optional[str]) -> Optional[str]:
  if text is None:
    return None
  try:
    datetime.datetime.strptime(text, "%Y-%m")
  except ValueError:
    raise ValueError(f"{text!r} is not a month, YYYY-MM (e.g. 2026-11)") from None
  return text


def _date(text: Optional[str]) -> Optional[str]:
  if text is None:
    return None
  try:
    return datetime.date.fromisoformat(text).isoformat()
  except ValueError:
    raise ValueError(f"{text!r} is not a date, YYYY-MM-DD") from None


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
  """cxr-monitor: a node's figures at this site, its alarms, verdict imports, exports."""
  spool_dir: str = option(
      help="The node's --spool_dir (read while the node runs; only --import_verdicts "
      "writes, appending to its verdicts.jsonl).")
  month: Optional[str] = option(
      None, parse=_month, help="The month whose films count, YYYY-MM; default: this month "
      "(or --since/--until).")
  since: Optional[str] = option(None, parse=_date, help="The first day whose films count, "
                                "YYYY-MM-DD (instead of --month).")
  until: Optional[str] = option(None, parse=_date, help="The last day whose films count, "
                                "YYYY-MM-DD (default: today, with --since).")
  export: Optional[str] = option(
      None, help="Also write the period's report without patient data to this file: "
      ".json (the whole report) or .csv (a row per model and figure), for a registry.")
  import_verdicts: Optional[str] = option(
      None, help="First import readers' verdicts from this CSV (a RIS export): a "
      "pneumonia column and a sop_instance_uid or accession_number column; optional "
      "subtype and reader columns.")
  reader: str = option("RIS import", help="Who the imported verdicts are from, where the "
                       "CSV has no reader column.")
  model: Optional[str] = option(
      None, help="A site-calibrated package the node ran: its own measured figures are "
      "the stated ones for its films (the released model's are known without it).")

  def __post_init__(self):
    """Raises ConfigError: --month with --since or --until, or --since after --until."""
    if self.month and (self.since or self.until):
      raise ConfigError("give --month or --since/--until, not both")
    if self.until and not self.since:
      raise ConfigError("--until needs --since")
    if self.since and self.until and self.since > self.until:
      raise ConfigError(f"--since {self.since} is after --until {self.until}")
    if self.export and not self.export.endswith((".json", ".csv")):
      raise ConfigError("--export must name a .json or a .csv file")


MONITOR_REQUIRED = ("spool_dir",)
