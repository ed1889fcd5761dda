"""cxr-node's review page in a real headless browser (Debian's chromium and chromedriver,
driven by Selenium): hostile DICOM strings stay text, a click shows the film and its
overlay, and the worklist refreshes by itself."""
import io
import os
import shutil

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium is not installed (pip install cxr-edge[test])")

# pylint: disable=g-import-not-at-top,wrong-import-position
from selenium.common.exceptions import NoAlertPresentException
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cxr_edge.node import review
from tests import dicom_files
from tests.node_test import HOSTILE_NAME, HOSTILE_SERIES, Pacs, running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver are not installed (Debian: apt-get install chromium "
    "chromium-driver; .ci/run installs them)")


@pytest.fixture
def browser(tmp_path):
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  # As root in CI there is no sandbox; the rest keeps Chromium off the (closed) network.
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'chromium'}"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
  driver.set_page_load_timeout(60)
  try:
    yield driver
  finally:
    driver.quit()


def _no_alert(driver):
  try:
    driver.switch_to.alert.dismiss()
  except NoAlertPresentException:
    return True
  return False


def test_worklist_escapes_hostile_strings_and_a_click_shows_film_and_overlay(
    released_model, browser, tmp_path):
  hostile = dicom_files.study_film(80, PatientName=HOSTILE_NAME,
                                   SeriesDescription=HOSTILE_SERIES)
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    overlay=True) as node:
    assert send(node.ports.dicom, [dicom_files.study_film(81), hostile]) == [0, 0]
    assert node.wait_idle(180)
    base = f"http://127.0.0.1:{node.ports.http}/"
    browser.get(base)
    assert browser.title == "cxr-node worklist"  # no injected script ran
    assert _no_alert(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "script") == []
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td")]
    shown = review.person_name(HOSTILE_NAME)  # "Family, Given", escaped, as text
    assert shown in cells and HOSTILE_SERIES in cells  # shown as the text it is
    assert not browser.find_elements(By.CSS_SELECTOR, "td b, td img")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr")[1:]
    assert len(rows) == 2 and shown in rows[0].text  # newest first
    rows[0].find_element(By.CSS_SELECTOR, "a").click()
    uid = pydicom.dcmread(io.BytesIO(hostile)).SOPInstanceUID
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/film/{uid}"))
    sizes = WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const i = Array.from(document.images);"
        "return i.length == 2 && i.every(x => x.complete) ? "
        "i.map(x => [x.alt, x.naturalWidth]) : null;"))
    assert [alt for alt, _ in sizes] == ["film", "occlusion overlay"]
    assert all(width > 0 for _, width in sizes)  # both decoded as images
    assert shown in browser.find_element(By.CSS_SELECTOR, "table").text

    # The worklist refreshes by itself: a film sent now appears without any action.
    browser.get(base)
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr")) == 3
    assert send(node.ports.dicom, [dicom_files.study_film(82)]) == [0]
    WebDriverWait(browser, review.REFRESH_SECONDS * 3).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr")) == 4)


def test_the_worklist_serves_triage_names_ids_delivery_and_the_flag_filter(
    released_model, browser, tmp_path):
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", http_port=0,
                      forward=pacs.address) as node:
      films = [dicom_files.study_film(84, study=3, PatientName="Smith^Amy^Jane"),
               dicom_files.study_film(85, study=4)]
      assert send(node.ports.dicom, films) == [0, 0]
      assert node.wait_idle(180)
      pacs.stop()  # reports sent from now on wait
      late = dicom_files.study_film(86, study=5, PatientName="Late^Len")
      assert send(node.ports.dicom, [late]) == [0]
      WebDriverWait(browser, 60).until(lambda d: node.spool.outbox())
      base = f"http://127.0.0.1:{node.ports.http}/"
      browser.get(base)
      rows = {r.find_elements(By.CSS_SELECTOR, "td")[1].text:
              [td.text for td in r.find_elements(By.CSS_SELECTOR, "td")]
              for r in browser.find_elements(By.CSS_SELECTOR, "tr")[1:]}
      assert set(rows) == {"Smith, Amy Jane", "Test, Patient4", "Late, Len"}
      header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "th")]
      smith = dict(zip(header, rows["Smith, Amy Jane"]))
      assert (smith["Patient ID"], smith["Accession"], smith["Study date"]) == (
          "TEST-3", "ACC3", "2026-12-01")
      assert smith["Report delivery"] == "stored at the PACS"
      assert dict(zip(header, rows["Late, Len"]))["Report delivery"].startswith("waiting ")
      flagged = [r for r, cells in rows.items() if "PNEUMONIA" in " ".join(cells)]
      browser.find_element(By.LINK_TEXT, "Show flagged films only").click()
      WebDriverWait(browser, 30).until(lambda d: "flagged=1" in d.current_url)
      names = [r.find_elements(By.CSS_SELECTOR, "td")[1].text
               for r in browser.find_elements(By.CSS_SELECTOR, "tr")[1:]]
      assert sorted(names) == sorted(flagged)
      browser.find_element(By.LINK_TEXT, "Show all films").click()
      WebDriverWait(browser, 30).until(
          lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr")) == 4)
  finally:
    pacs.stop()


def test_readers_record_verdicts_in_one_click_and_a_cross_site_post_is_refused(
    released_model, browser, tmp_path):
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  from cxr_edge.node import verdicts as verdicts_lib  # pylint: disable=g-import-not-at-top
  films = [dicom_files.study_film(110 + k, study=60 + k) for k in range(2)]
  uids = [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in films]
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    assert send(node.ports.dicom, films) == [0, 0]
    assert node.wait_idle(180)
    base = f"http://127.0.0.1:{node.ports.http}/"
    browser.get(base)
    assert not browser.find_elements(By.CSS_SELECTOR, "form.verdict")  # who, first
    browser.find_element(By.LINK_TEXT, "give your name").click()
    browser.find_element(By.NAME, "reader").send_keys("Dr Ada Test")
    browser.find_element(By.CSS_SELECTOR, "form.reader button").click()
    WebDriverWait(browser, 30).until(
        lambda d: "Verdicts are recorded as Dr Ada Test" in d.page_source)
    # One click on the newest film's row (uids[1]): pneumonia.
    row = browser.find_elements(By.CSS_SELECTOR, "tr")[1]
    row.find_element(By.CSS_SELECTOR, "button[value='yes']").click()
    # The newest row's verdict cell, once the page after the click has loaded.
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: any(td.text.startswith("pneumonia") for td in d.find_elements(
            By.CSS_SELECTOR, "td.verdict")[:1]))
    # Changed on the film's page: viral. The log keeps both, with who.
    browser.get(base + f"film/{uids[1]}")
    browser.find_element(By.CSS_SELECTOR, "button[value='viral']").click()
    WebDriverWait(browser, 30).until(lambda d: "pneumonia (viral)" in d.page_source)
    history = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "tr")
               if "Dr Ada Test" in tr.text]
    assert len(history) == 2 and "pneumonia (viral)" in history[1]
    csrf = node.review.csrf
    # A page of another origin posting to the node, even with the real form token.
    attack = (f'<form method="post" action="{base}verdict"><input name="uid" '
              f'value="{uids[0]}"><input name="verdict" value="no"><input name="csrf" '
              f'value="{csrf}"><button id="go">go</button></form>').encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(attack)

      def log_message(self, *args):
        del args

    other = http.server.HTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
      browser.get(f"http://127.0.0.1:{other.server_address[1]}/")
      browser.find_element(By.ID, "go").click()
      WebDriverWait(browser, 30).until(lambda d: "another site" in d.page_source)
    finally:
      other.shutdown()
  log = verdicts_lib.Verdicts(str(tmp_path / "spool"))
  current = log.current()
  assert set(current) == {uids[1]}  # nothing recorded for the attacked film
  assert (current[uids[1]].pneumonia, current[uids[1]].subtype) == (True, "VIRAL")
  assert [v.reader for v in log.history(uids[1])] == ["Dr Ada Test"] * 2
