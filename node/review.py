"""The clinic node's review page: a worklist of what the node read, newest first, and
each film with its overlay. Standard library only (http.server), no external assets
(clinics are often offline), no script: the worklist refreshes itself by a meta tag.

Every value shown comes from a DICOM header or the node's own records and is escaped;
film identifiers in URLs must be well-formed UIDs, so nothing but the spool's own files
can be served. The page binds to loopback unless told otherwise; anywhere else it asks
for a token (once, as ?token=..., then kept in an HttpOnly cookie; or as an
"Authorization: Bearer" header), compared in constant time.
"""
import contextlib
import datetime
import hmac
import html
import http.server
import io
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from PIL import Image

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.edge import runtime
from cxr_edge.node import monitor_lib
from cxr_edge.node import spool as spool_lib
from cxr_edge.node import verdicts as verdicts_lib

log = logging.getLogger("cxr_edge.node")

# Banners: none, one sentence, or several (each its own).
Notices = Union[None, str, Sequence[str]]
WORKLIST_LENGTH = 200
MAX_CONNECTIONS = 32
REFRESH_SECONDS = 10
PREVIEW_SIDE = 1024
_COOKIE = "cxr_node_token"
_READER_COOKIE = "cxr_node_reader"
# How long the browser keeps the reader's name (a cookie for one browser session had it
# asked again every day); a shared workstation's next reader gives theirs at /reader.
READER_COOKIE_DAYS = 30
# A verdict or a name is a few dozen bytes of form; larger is not one.
MAX_FORM_BYTES = 4096
_HEADERS = {
    # Nothing from elsewhere, no script, no framing, no caching of patient data.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; "
                               "style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # Nothing to other sites; same-origin, so that the browser names this page as the
    # Origin of its own forms (with no-referrer it sends "null", like any other page).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STYLE = """
body{font-family:sans-serif;margin:1em;background:#111;color:#eee}
a{color:#9cf}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #444;padding:4px 8px;text-align:left;font-size:14px}
.PNEUMONIA{color:#f96;font-weight:bold}tr.flagged{background:#2a1a10}.warn{color:#fd6}.err{color:#f66}
.caution{background:#432;padding:6px;margin:8px 0}
.notice{background:#822;color:#fff;font-weight:bold;padding:8px;margin:8px 0}img{max-width:48%;margin:4px}
"""
UNCALIBRATED = ("This model's threshold was not calibrated on this site's films: run "
                "cxr-calibrate on labelled local films before relying on its flags.")
CAUTION = ("Triage aid, not for diagnostic use: the findings below are a model's "
           "outputs; every film is read by a clinician.")


def _e(value: object) -> str:
  return html.escape("" if value is None else str(value), quote=True)


def _time(ns: Optional[int]) -> str:
  if not ns:
    return ""
  return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _study_date(text: Optional[str]) -> str:
  text = text or ""
  if len(text) == 8 and text.isdigit():
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"
  return text


def _page(title: str, body: str, refresh: bool = False,
          notice: Notices = None, model: Optional[str] = None) -> bytes:
  """A page with the caution, which model the node runs and, for a smoke-test model,
  its notice as a banner."""
  meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
  banner = "".join(f'<div class="notice">{_e(n)}</div>' for n in _notices(notice) if n)
  banner += f'<p class="model">Results of the {_e(model)}.</p>' if model else ""
  return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\">{meta}"
          f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
          f"<h1>{_e(title)}</h1>{banner}<div class=\"caution\">{_e(CAUTION)}</div>{body}"
          "</body></html>").encode("utf-8")


def _notices(notice: Notices) -> List[str]:
  """Banners as a list, however given."""
  return [notice] if isinstance(notice, str) else list(notice or ())


def _outcome(record: Dict) -> str:
  if record.get("error"):
    return f'<span class="err">not analysed: {_e(record["error"])}</span>'
  return f'<span class="warn">{_e(record.get("warning"))}</span>'


def person_name(text: Optional[str]) -> str:
  """A DICOM person name as people read it: "Family, Given Middle" (the alphabetic
  group; the ideographic one where that is empty); anything else as it is."""
  if not text:
    return ""
  groups = str(text).split("=")
  group = next((g for g in groups if g.strip("^ ")), "")
  parts = [p.strip() for p in group.split("^")] + [""] * 5
  family, given, middle, prefix, suffix = parts[:5]
  first = " ".join(p for p in (prefix, given, middle) if p)
  name = ", ".join(p for p in (family, first) if p)
  return f"{name}, {suffix}" if suffix and name else (name or suffix)


def _minutes(ns: int) -> str:
  minutes = max(0, ns) / 60e9
  return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def delivery_text(record: Dict, delivery: Optional[spool_lib.Delivery],
                  now_ns: int) -> str:
  """Where the film's report is: stored at the PACS, waiting (and for how long), refused;
  empty when the node does not forward."""
  if delivery is None:
    return ""
  state = delivery.of(record.get("sop_instance_uid", ""))
  if state == "stored":
    return "stored at the PACS"
  if state == "waiting":
    return f"waiting {_minutes(now_ns - (record.get('processed_ns') or now_ns))}"
  if state == "refused":
    return "refused by the PACS (dead letter)"
  return "no report sent"


def catch_up_text(state: Optional[Dict]) -> str:
  """The catch-up's last round in a sentence (empty without --query)."""
  if not state:
    return ""
  last = state.get("last_round")
  if not last:
    return f"Catch-up from {state['pacs']}: first round under way."
  if last.get("error"):
    return (f"Catch-up from {state['pacs']}: the last round ({last['started']}) failed: "
            f"{last['error']}.")
  return (f"Catch-up from {state['pacs']}: last round {last['started']}, "
          f"{last['studies']} CR/DX stud(ies) since {_study_date(last['since'])}, "
          f"{last['retrieved']} retrieved" + (f", {last['failed']} did not arrive"
                                              if last.get("failed") else "")
          + ("; more follow" if last.get("more") else "") + ".")


def verdict_text(verdict: Optional[verdicts_lib.Verdict]) -> str:
  """A reader's verdict in words (empty when none is recorded)."""
  if verdict is None or verdict.pneumonia is None:
    return ""
  if not verdict.pneumonia:
    return "no pneumonia"
  return "pneumonia" + (f" ({verdict.subtype.lower()})" if verdict.subtype else "")


# The buttons' values, and what each records: (pneumonia, subtype).
VERDICT_BUTTONS = {"yes": (True, None), "bacterial": (True, "BACTERIAL"),
                   "viral": (True, "VIRAL"), "no": (False, None), "unknown": (None, None)}


def verdict_form(uid: str, csrf: str, back: str, subtype: bool = False) -> str:
  """The buttons that record a reader's verdict on one film: one click."""
  labels = ([("yes", "Pneumonia, kind not known"), ("bacterial", "Bacterial pneumonia"),
             ("viral", "Viral pneumonia"), ("no", "No pneumonia"), ("unknown", "Withdraw")]
            if subtype else [("yes", "Pneumonia"), ("no", "No pneumonia")])
  buttons = "".join(f'<button name="verdict" value="{v}">{_e(t)}</button>'
                    for v, t in labels)
  return (f'<form method="post" action="/verdict" class="verdict">'
          f'<input type="hidden" name="uid" value="{_e(uid)}">'
          f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
          f'<input type="hidden" name="back" value="{_e(back)}">{buttons}</form>')


def reader_line(reader: Optional[str]) -> str:
  """Who records verdicts from this browser, or where to say it (a page of its own: the
  worklist refreshes itself, which would lose a name being typed)."""
  if reader:
    return (f'<p class="reader">Verdicts are recorded as {_e(reader)} '
            '(<a href="/reader">not you?</a>).</p>')
  return ('<p class="reader">To record readers\' verdicts, <a href="/reader">give your '
          'name</a> first.</p>')


def reader_page(csrf: str, reader: Optional[str], notice: Notices = None,
                model: Optional[str] = None) -> bytes:
  """Asks who records verdicts (kept in a cookie, and with each verdict)."""
  return _page("cxr-node: who records verdicts", (
      '<form method="post" action="/reader" class="reader"><label>Your name, kept with '
      'each verdict you record from the radiologist\'s report: '
      f'<input name="reader" maxlength="64" required value="{_e(reader or "")}"></label>'
      f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
      '<button>Save</button></form><p><a href="/">worklist</a></p>'), notice=notice,
      model=model)


def worklist(records: List[Dict], queued: int, waiting: int,
             notice: Notices = None, dead: int = 0,
             model: Optional[str] = None, quarantined: int = 0,
             delivery: Optional[spool_lib.Delivery] = None, flagged_only: bool = False,
             now_ns: Optional[int] = None, catch_up: Optional[Dict] = None,
             verdicts: Optional[Dict[str, verdicts_lib.Verdict]] = None,
             csrf: Optional[str] = None, reader: Optional[str] = None,
             alarms: Sequence[Dict] = ()) -> bytes:
  """The worklist: in order of receipt (newest first), never reordered by finding;
  flagged films marked, and shown alone only when asked (`flagged_only`). `notice`, a
  smoke-test or uncalibrated model's sentence, is a banner; `delivery`, where each
  film's report is (None: the node does not forward); `catch_up`, the catch-up's state
  (None without --query); `verdicts`, the readers' verdicts, with a form per row when
  `csrf` is given (the form's token) and `reader` names who records them; `alarms`,
  each a banner."""
  now_ns = now_ns or time.time_ns()
  shown = [r for r in records if not flagged_only or r.get("prediction") == "PNEUMONIA"]
  rows = []
  for r in shown:
    uid = r.get("sop_instance_uid", "")
    p = r.get("p_pneumonia")
    threshold = r.get("threshold")
    flagged = r.get("prediction") == "PNEUMONIA"
    rows.append(
        ('<tr class="flagged">' if flagged else "<tr>") +
        f"<td>{_e(_time(r.get('received_ns')))}</td>"
        f"<td>{_e(person_name(r.get('patient_name')))}</td>"
        f"<td>{_e(r.get('patient_id'))}</td>"
        f"<td>{_e(r.get('accession_number'))}</td>"
        f"<td>{_e(_study_date(r.get('study_date')))}</td>"
        f"<td>{_e(r.get('series_description'))}</td>"
        f"<td class=\"{_e(r.get('prediction') or '')}\">"
        f"<a href=\"/film/{urllib.parse.quote(uid)}\">{'&#9873; ' if flagged else ''}"
        f"{'&#9888; warning: ' if r.get('warning') and r.get('prediction') else ''}"
        f"{_e(r.get('prediction') or ('NOT ANALYSED' if r.get('error') else 'none'))}"
        f"{' (' + _e(r['subtype'].lower()) + ')' if r.get('subtype') else ''}</a></td>"
        f"<td>{'' if p is None else f'{p:.3f}'}</td>"
        f"<td>{'' if threshold is None else f'{threshold:.3f}'}</td>"
        f"<td class=\"delivery\">{_e(delivery_text(r, delivery, now_ns))}</td>"
        f"<td>{_outcome(r)}</td>"
        + (f"<td class=\"verdict\">{_e(verdict_text(verdicts.get(uid)))}"
           f"{verdict_form(uid, csrf, '/?flagged=1' if flagged_only else '/') if csrf and reader and r.get('prediction') else ''}</td>"
           if verdicts is not None else "") + "</tr>")
  status = (f"<p>{len(shown)} film(s) shown (in order of receipt, newest first, at most "
            f"{WORKLIST_LENGTH}); "
            f"{queued} waiting to be read; {waiting} report(s) waiting for the PACS; "
            f"{dead} refused for good (dead letters: fix the cause, then cxr-node "
            "--requeue_dead_letters)"
            + (f"; {quarantined} damaged file(s) set aside in quarantine/ (see each "
               ".reason.txt)" if quarantined else "") + ". "
            f"Refreshes every {REFRESH_SECONDS} s.</p>")
  if catch_up:
    status += f'<p class="catch-up">{_e(catch_up_text(catch_up))}</p>'
  if verdicts is not None:
    status += ('<p><a href="/site">How the model does at this site</a> (the figures on '
               'the films with a reader\'s verdict, and drift alarms).</p>')
    if csrf:
      status += reader_line(reader)
  links = ('<p class="filter">Showing flagged films only (PNEUMONIA). '
           '<a href="/">Show all films</a></p>' if flagged_only else
           '<p class="filter">Showing all films. <a href="/?flagged=1">Show flagged films '
           'only</a></p>')
  table = ("<table><tr><th>Received</th><th>Patient</th><th>Patient ID</th>"
           "<th>Accession</th><th>Study date</th><th>Series</th><th>Prediction</th>"
           "<th>p_pneumonia</th><th>Threshold</th><th>Report delivery</th><th>Warning</th>"
           + ("<th>Reader's verdict</th>" if verdicts is not None else "")
           + "</tr>" + "".join(rows) + "</table>")
  notices = _notices(notice) + [f"ALARM: {a['why']} ({a['detail']})." for a in alarms]
  return _page("cxr-node worklist", status + links + table, refresh=True, notice=notices,
               model=model)


def open_files() -> Optional[int]:
  """The node process's open file descriptors (None where the system does not say)."""
  try:
    return len(os.listdir("/proc/self/fd"))
  except OSError:
    return None


def status(spool: spool_lib.Spool, forwarding: bool, now_ns: Optional[int] = None,
           catch_up: Optional[Dict] = None, parts: Optional[Dict[str, Dict]] = None) -> Dict:
  """The node's state for a monitoring script (/status.json): whether every part is
  running (`healthy`, and each part's health), counts, how long the oldest film and the
  oldest report have waited, and the catch-up's last round."""
  now_ns = now_ns or time.time_ns()
  pending = spool.pending()
  outbox = spool.outbox() if forwarding else []

  def age(folder, name, ctime=False):
    try:
      st = os.stat(spool.path(folder, name))
    except OSError:
      return None
    return round((now_ns - (st.st_ctime_ns if ctime else st.st_mtime_ns)) / 1e9, 1)

  return {"healthy": all(p["running"] for p in (parts or {}).values()),
          "parts": parts or {}, "open_files": open_files(),
          "films_waiting_to_be_read": len(pending),
          "oldest_film_waiting_seconds": age("incoming", pending[0] + ".dcm")
                                         if pending else 0.0,
          "forwarding": forwarding,
          "reports_waiting_for_the_pacs": len(outbox),
          "oldest_report_waiting_seconds": age("outbox", outbox[0], ctime=True)
                                           if outbox else 0.0,
          "dead_letters": len(spool.dead_letters()),
          "quarantined": len(spool.quarantined()),
          "catch_up": catch_up}


def film_page(record: Dict, has_overlay: bool, notice: Notices = None,
              model: Optional[str] = None,
              history: Optional[Sequence[verdicts_lib.Verdict]] = None,
              csrf: Optional[str] = None, reader: Optional[str] = None) -> bytes:
  """One film: its details, the film and (if made) its occlusion overlay; with
  `history`, the readers' verdicts on it and (given `csrf` and `reader`) the form."""
  uid = urllib.parse.quote(record["sop_instance_uid"])
  # What the reader must know before the result comes first.
  fields = [("Not analysed", record.get("error")), ("Warning", record.get("warning")),
            ("Received", _time(record.get("received_ns"))),
            ("Study date", _study_date(record.get("study_date"))),
            ("Patient", person_name(record.get("patient_name"))),
            ("Patient ID", record.get("patient_id")),
            ("Accession", record.get("accession_number")),
            ("Series", record.get("series_description")),
            ("Prediction", record.get("prediction") or "none"),
            ("p_pneumonia", record.get("p_pneumonia")),
            ("Subtype (likelier)", record.get("subtype")),
            ("p_bacterial", record.get("p_bacterial")), ("p_viral", record.get("p_viral")),
            ("Threshold", record.get("threshold")),
            ("SOP Instance UID", record.get("sop_instance_uid")),
            ("Report", record.get("report_sop_instance_uid")),
            ("Model sha256", record.get("model_sha256"))]
  table = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                              for k, v in fields if v is not None) + "</table>"
  images = f'<img src="/film/{uid}.png" alt="film">'
  if has_overlay:
    images += f'<img src="/overlay/{uid}.png" alt="occlusion overlay">'
  verdicts = ""
  if history is not None:
    current = history[-1] if history else None
    verdicts = (f"<h2>Reader's verdict</h2><p>{_e(verdict_text(current) or 'none yet')}"
                "</p>")
    if csrf and reader and record.get("prediction"):
      verdicts += verdict_form(record["sop_instance_uid"], csrf,
                               f"/film/{record['sop_instance_uid']}", subtype=True)
    elif csrf and record.get("prediction"):
      verdicts += '<p>Give your name on the <a href="/">worklist</a> first.</p>'
    if history:
      verdicts += ("<table><tr><th>Recorded</th><th>Verdict</th><th>By</th><th>From</th>"
                   "</tr>" + "".join(
                       f"<tr><td>{_e(v.time)}</td><td>{_e(verdict_text(v) or 'withdrawn')}"
                       f"</td><td>{_e(v.reader)}</td><td>{_e(v.source)}</td></tr>"
                       for v in history) + "</table>")
  return _page("cxr-node film", '<p><a href="/">worklist</a></p>' + table + verdicts
               + images, notice=notice, model=model)


def site_page(state: Dict[str, Any], notice: Notices = None,
              model: Optional[str] = None) -> bytes:
  """The site's figures (this month and all time) beside the stated ones, and the
  alarms, each with its rule."""
  body = ['<p><a href="/">worklist</a> &middot; <a href="/site.json">as JSON</a></p>']
  body.append(f"<p>Figures of the model with sha256 {_e(state['model_sha256'][:12])} "
              "only: a new model's figures start afresh. Stated figures: "
              f"{_e(state.get('stated_source') or 'none recorded for this model')}.</p>")
  for title, figures in (("This month", state["this_month"]),
                         ("Since this model started here", state["all_time"])):
    share = figures["verdict_share"]
    body.append(f"<h2>{_e(title)}</h2><p>{figures['with_verdict']} of "
                f"{figures['films']} films read have a reader's verdict"
                + (f" ({100 * share:.0f}%)" if share is not None else "") +
                ". The figures describe those films; if readers record mostly the hard "
                "or the flagged ones, they are not the model's figures on all films.</p>")
    rows = []
    for name in monitor_lib.FIGURES:
      f = figures[name]
      shown = lambda value, name=name: monitor_lib.format_figure(name, value)
      interval = (f"{shown(f['ci95'][0])} to {shown(f['ci95'][1])}"
                  if f["ci95"][0] is not None else "")
      rows.append(f"<tr><td>{_e(monitor_lib.FIGURE_NAMES[name])}</td>"
                  f"<td>{shown(f['value'])}</td><td>{interval}</td>"
                  f"<td>{f['n']}</td><td>{shown(f['stated'])}</td>"
                  f"<td class=\"{'err' if f['verdict'] == 'worse than stated' else ''}\">"
                  f"{_e(f['verdict'])}</td></tr>")
    body.append("<table><tr><th>Figure</th><th>At this site</th><th>95% interval</th>"
                "<th>Films</th><th>Stated</th><th>Verdict</th></tr>" + "".join(rows)
                + "</table>")
  body.append("<h2>Alarms</h2>")
  if state["alarms"]:
    body.append("<ul>" + "".join(f"<li><b>{_e(a['rule'])}</b>: {_e(a['detail'])}. "
                                 f"{_e(a['why'])}.</li>" for a in state["alarms"]) + "</ul>")
  else:
    body.append("<p>None.</p>")
  if state["drift"].get("note"):
    body.append(f"<p>{_e(state['drift']['note'])}.</p>")
  return _page("cxr-node: this site", "".join(body), notice=notice, model=model)


def film_preview(path: str) -> bytes:
  """A film as a PNG for the browser: windowed as the model saw it (under the same pixel
  limit), at most PREVIEW_SIDE px on its longer side."""
  im = Image.fromarray(runtime.film_gray(image_io.read_file(path)), "L")
  im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
  out = io.BytesIO()
  im.save(out, format="PNG")
  return out.getvalue()


def _read_if_there(path: str) -> Optional[bytes]:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    return None


class ReviewServer:
  """The review page over a spool, in a background thread."""

  def __init__(self, spool: spool_lib.Spool, host: str, port: int,
               token: Optional[str] = None, waiting=lambda: 0,
               notice: Optional[str] = None, model: Optional[str] = None,
               timeout: float = 10.0, forwarding: bool = False,
               uncalibrated: bool = False,
               catch_up: Callable[[], Optional[Dict]] = lambda: None,
               monitor: Optional[monitor_lib.Monitor] = None,
               public_origin: Optional[str] = None,
               parts: Callable[[], Dict[str, Dict]] = dict):
    """
    Args:
      spool: the node's spool.
      host, port: where to listen (port 0: any free port).
      token: required of every request when given.
      waiting: a callable giving how many reports wait for the PACS.
      notice: a smoke-test model's sentence, a banner on every page.
      model: which model the node runs (ModelInfo.headline), on every page.
      timeout: seconds a connection may take to send each part of its request.
      forwarding: whether the node forwards reports (the delivery column).
      uncalibrated: the model's threshold was not set on this site's films (a banner).
      catch_up: a callable giving the catch-up's state (None without --query).
      monitor: the site's figures and alarms, and the readers' verdicts (the forms).
      public_origin: the page's origin as browsers reach it through a reverse proxy
        (node_config.public_origin); its forms are accepted from it too.
      parts: a callable giving the health of each part of the node (its threads).
    """
    self.spool, self.token, self.waiting = spool, token, waiting
    self.catch_up, self.monitor = catch_up, monitor
    self.public_origin = public_origin
    self.parts = parts
    # The forms' token: a page elsewhere cannot read it, so it cannot post a verdict.
    self.csrf = secrets.token_urlsafe(24)
    self.forwarding = forwarding
    # Each a banner of its own: a smoke-test model's sentence, an uncalibrated one's.
    self.notice = [n for n in (notice, UNCALIBRATED if uncalibrated else None) if n]
    self.model = model
    # One film is decoded at a time (a 7000x7000 film takes about a gigabyte while it
    # is), and each once: its preview is kept in previews/, pruned with the film.
    self._rendering = threading.Lock()
    handler = type("Handler", (_Handler,), {"server_state": self, "timeout": timeout})
    self.httpd = _Server((host, port), handler)
    self.httpd.daemon_threads = True
    self.host = host
    self._thread = threading.Thread(target=self.httpd.serve_forever,
                                    name="cxr-node review page", daemon=True)

  @property
  def port(self) -> int:
    return self.httpd.server_address[1]

  def notices(self) -> List[str]:
    """The page's banners: the model's, and any part of the node that has stopped."""
    return self.notice + [f"{name} has stopped: {health['dead']}. The node is stopping; "
                          "a service manager restarts it."
                          for name, health in self.parts().items() if health.get("dead")]

  def preview(self, uid: str) -> Optional[bytes]:
    """The film's preview PNG (rendered once, then from previews/), or None if the film
    is no longer kept."""
    cached = self.spool.path("previews", uid + ".png")
    png = _read_if_there(cached)
    if png is not None:
      return png
    with self._rendering:
      png = _read_if_there(cached)  # another request rendered it meanwhile
      if png is None:
        path = self.spool.path("films", uid + ".dcm")
        if not os.path.exists(path):
          return None
        png = film_preview(path)
        spool_lib.write_atomic(cached, png)
    return png

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self._thread.join(timeout=10)


class _Server(http.server.ThreadingHTTPServer):
  """At most MAX_CONNECTIONS connections served at once; more are closed at once (each
  holds a thread and, for a slow client, its time)."""
  daemon_threads = True

  def __init__(self, *args):
    self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    super().__init__(*args)

  def process_request(self, request, client_address):
    if not self._slots.acquire(blocking=False):
      self.shutdown_request(request)
      return
    try:
      super().process_request(request, client_address)
    except BaseException:
      self._slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._slots.release()


# Where a good ?token= may send the browser on: the page's own addresses only (a path
# like "/\\evil.example/" is another site to a browser).
_OWN_PATH = re.compile(r"/|/site|/reader|/(worklist|status|site)\.json|/(film|overlay)/[0-9.]{1,64}"
                       r"(\.png)?")


def own_location(back: str) -> str:
  """Where a form sends the browser back to: one of the page's own paths (with the
  worklist's one query), rebuilt from its parts; anything else (another host, a scheme,
  a path of no page, control characters) goes to the worklist."""
  parts = urllib.parse.urlsplit(back)
  if (parts.scheme or parts.netloc or not _OWN_PATH.fullmatch(parts.path)
      or any(ord(c) < 32 for c in back)):
    return "/"
  return parts.path + ("?flagged=1" if parts.query == "flagged=1" else "")


class _Handler(http.server.BaseHTTPRequestHandler):
  server_state: ReviewServer
  server_version = "cxr-node"
  sys_version = ""
  timeout: float  # each read and write (set per server); the whole request: 3 times it

  def setup(self):
    super().setup()
    # A client dripping its request a byte at a time passes every per-read timeout:
    # the connection is shut when the whole request takes longer than this.
    self._deadline = threading.Timer(3 * self.timeout, self._cut)
    self._deadline.daemon = True
    self._deadline.start()

  def _cut(self):
    with contextlib.suppress(OSError):
      self.connection.shutdown(socket.SHUT_RDWR)

  def finish(self):
    self._deadline.cancel()
    with contextlib.suppress(OSError):
      super().finish()

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args  # paths carry UIDs: the node's log stays free of them

  def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
            headers: Optional[Dict[str, str]] = None) -> None:
    self.send_response(status)
    for k, v in {**_HEADERS, **(headers or {})}.items():
      self.send_header(k, v)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _authorised(self, query: Dict[str, List[str]]) -> Optional[bool]:
    """True, False, or None when a good ?token= was given (answered with a redirect)."""
    token = self.server_state.token
    if token is None:
      return True
    given = []
    bearer = self.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
      given.append(bearer[7:].strip())
    given += self._cookies(_COOKIE)
    if any(hmac.compare_digest(g.encode(), token.encode()) for g in given):
      return True
    offered = query.get("token", [""])[0]
    if offered and hmac.compare_digest(offered.encode(), token.encode()):
      # Into a cookie, and out of the address bar (and the browser's history).
      path = urllib.parse.urlsplit(self.path).path
      self._send(303, b"", headers={
          "Location": path if _OWN_PATH.fullmatch(path) else "/",
          "Set-Cookie": f"{_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"})
      return None
    return False

  def do_HEAD(self):  # pylint: disable=invalid-name
    self.do_GET()

  def _host_allowed(self) -> bool:
    """On loopback (no token), only requests addressed to loopback: a web page elsewhere
    that rebinds its own name to 127.0.0.1 sends its own name as Host."""
    if self.server_state.token is not None:
      return True
    host = (self.headers.get("Host") or "").strip().lower()
    public = self.server_state.public_origin
    if public and host == urllib.parse.urlsplit(public).netloc:
      return True  # the stated reverse proxy, passing on the public name
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("127.0.0.1", "localhost", "[::1]")

  def do_GET(self):  # pylint: disable=invalid-name
    if not self._host_allowed():
      self._send(421, _page("cxr-node", "<p>This page answers only to its own loopback "
                                        "address (http://127.0.0.1:PORT/).</p>"))
      return
    url = urllib.parse.urlsplit(self.path)
    allowed = self._authorised(urllib.parse.parse_qs(url.query))
    if allowed is None:
      return
    if not allowed:
      self._send(401, _page("cxr-node", "<p>This page needs its access token: open it "
                                        "as /?token=... once.</p>"))
      return
    self._query = urllib.parse.parse_qs(url.query)
    try:
      self._route(url.path)
    except (OSError, errors.ImageError, image_io.UnreadableFile) as e:
      log.warning("review page: %s", type(e).__name__)
      self._send(500, _page("cxr-node", "<p>That film cannot be shown.</p>"))

  def _cookies(self, name: str) -> List[str]:
    """The values of the request's cookies called `name` (a browser may send several)."""
    values = []
    for part in self.headers.get("Cookie", "").split(";"):
      key, _, value = part.strip().partition("=")
      if key == name:
        values.append(value)
    return values

  def _reader(self) -> Optional[str]:
    """Who records verdicts from this browser (its cookie), or None."""
    name = verdicts_lib.clean_reader(urllib.parse.unquote(
        next(iter(self._cookies(_READER_COOKIE)), "")))
    return name or None

  def do_POST(self):  # pylint: disable=invalid-name
    """A reader's verdict (/verdict) or name (/reader): from this page's own forms only."""
    state = self.server_state
    if not self._host_allowed():
      self._send(421, _page("cxr-node", "<p>Wrong address.</p>"))
      return
    if state.monitor is None or self._authorised({}) is not True:
      self._send(403, _page("cxr-node", "<p>Not allowed.</p>"))
      return
    form = self._form()
    if form is None:
      return
    # Cross-site requests are refused three ways: the browser's own word
    # (Sec-Fetch-Site, Origin) and the form's token, which a page elsewhere cannot read.
    host = self.headers.get("Host", "")
    origin = self.headers.get("Origin")
    fetch_site = self.headers.get("Sec-Fetch-Site")
    token_ok = hmac.compare_digest(form.get("csrf", "").encode(), state.csrf.encode())
    own = {f"http://{host}", *([state.public_origin] if state.public_origin else [])}
    if (not token_ok or (origin is not None and origin not in own)
        or fetch_site not in (None, "same-origin")):
      log.warning("review page: a cross-site or stale form was refused")
      self._send(403, _page("cxr-node", '<p>This form is stale or came from another '
                                        'site. <a href="/">Open the worklist</a> and try '
                                        'again.</p>'))
      return
    path = urllib.parse.urlsplit(self.path).path
    if path == "/reader":
      name = verdicts_lib.clean_reader(form.get("reader"))
      if not name:
        self._send(400, _page("cxr-node", '<p>Give a name. <a href="/">Back</a></p>'))
        return
      self._send(303, b"", headers={
          "Location": "/", "Set-Cookie": f"{_READER_COOKIE}={urllib.parse.quote(name)}; "
                                         f"Max-Age={READER_COOKIE_DAYS * 86400}; "
                                         "HttpOnly; SameSite=Strict; Path=/"})
      return
    if path != "/verdict":
      self._send(404, _page("cxr-node", "<p>Not found.</p>"))
      return
    reader, uid = self._reader(), form.get("uid", "")
    if reader is None:
      self._send(400, _page("cxr-node", '<p>Give your name on the <a href="/">worklist'
                                        '</a> first.</p>'))
      return
    known = spool_lib.is_uid(uid) and state.spool.result(uid) is not None
    if form.get("verdict") not in VERDICT_BUTTONS or not known:
      self._send(400, _page("cxr-node", '<p>No such film or verdict. <a href="/">Back</a>'
                                        '</p>'))
      return
    pneumonia, subtype = VERDICT_BUTTONS[form["verdict"]]
    state.monitor.verdicts.record(verdicts_lib.Verdict(uid, pneumonia, subtype, reader,
                                                       source="page"))
    self._send(303, b"", headers={"Location": own_location(form.get("back", "/"))})

  def _form(self) -> Optional[Dict[str, str]]:
    """The request's urlencoded form (first value of each field), or None once answered
    with an error (too large, or not a form)."""
    try:
      length = int(self.headers.get("Content-Length", "-1"))
    except ValueError:
      length = -1
    if not 0 <= length <= MAX_FORM_BYTES:
      self._send(413, _page("cxr-node", "<p>Not a form this page sends.</p>"))
      return None
    try:
      body = self.rfile.read(length).decode("utf-8")
    except (OSError, UnicodeDecodeError):
      self._send(400, _page("cxr-node", "<p>Not a form this page sends.</p>"))
      return None
    return {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}

  def _route(self, path: str) -> None:
    state = self.server_state
    spool = state.spool
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    monitor = state.monitor
    if path in ("/", ""):
      self._send(200, worklist(
          spool.recent(WORKLIST_LENGTH), spool.queued(), state.waiting(), state.notices(),
          len(spool.dead_letters()), state.model, len(spool.quarantined()),
          spool.delivery() if state.forwarding else None,
          flagged_only=self._query.get("flagged", [""])[0] == "1",
          catch_up=state.catch_up(),
          verdicts=monitor.verdicts.current() if monitor else None,
          csrf=state.csrf if monitor else None,
          reader=self._reader(),
          alarms=[a.as_dict() for a in monitor.alarms] if monitor else ()))
    elif parts == ["reader"] and monitor:
      self._send(200, reader_page(state.csrf, self._reader(), state.notice, state.model))
    elif parts == ["site"] and monitor:
      self._send(200, site_page(monitor.state(), state.notice, state.model))
    elif parts == ["site.json"] and monitor:
      self._send(200, json.dumps(monitor.state()).encode("utf-8"), "application/json")
    elif parts == ["status.json"]:
      self._send(200, json.dumps(status(spool, state.forwarding, catch_up=state.catch_up(),
                                        parts=state.parts())).encode("utf-8"),
                 "application/json")
    elif parts == ["worklist.json"]:
      records = spool.recent(WORKLIST_LENGTH)
      if state.forwarding:  # each film's report: stored, waiting, refused, or none
        delivery = spool.delivery()
        records = [{**r, "delivery": delivery.of(r.get("sop_instance_uid", ""))}
                   for r in records]
      self._send(200, json.dumps(records).encode("utf-8"), "application/json")
    elif len(parts) == 2 and parts[0] in ("film", "overlay"):
      self._film(parts[0], parts[1])
    else:
      self._send(404, _page("cxr-node", "<p>Not found.</p>"))

  def _film(self, kind: str, name: str) -> None:
    spool = self.server_state.spool
    png = name.endswith(".png")
    uid = name[:-4] if png else name
    record = spool.result(uid) if spool_lib.is_uid(uid) else None
    if record is None:
      self._send(404, _page("cxr-node", "<p>No such film.</p>"))
      return
    overlay_path = spool.path("overlays", uid + ".png")
    if kind == "film" and not png:
      monitor = self.server_state.monitor
      self._send(200, film_page(record, os.path.exists(overlay_path),
                                self.server_state.notice, self.server_state.model,
                                monitor.verdicts.history(uid) if monitor else None,
                                self.server_state.csrf if monitor else None,
                                self._reader()))
    elif kind == "film":
      png_data = self.server_state.preview(uid)
      if png_data is None:
        self._send(410, _page("cxr-node", "<p>This film is no longer kept here "
                                          "(--keep_days); the PACS has it.</p>"))
        return
      self._send(200, png_data, "image/png")
    elif png and os.path.exists(overlay_path):
      with open(overlay_path, "rb") as f:
        self._send(200, f.read(), "image/png")
    else:
      self._send(404, _page("cxr-node", "<p>No overlay for this film.</p>"))
