"""The result card (node/card.py): the finding in words on a picture any viewer shows,
sent by default beside the SR in the film's study."""
import io

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.edge import runtime
from cxr_edge.node import card
from cxr_edge.node import report
from tests import dicom_files
from tests.node_report_test import RESULTS
from tests.node_test import Pacs, running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("kind, first, colour", [
    ("positive", "PNEUMONIA SUSPECTED", card._FLAGGED),  # pylint: disable=protected-access
    ("negative", "NO PNEUMONIA SUSPECTED", card._PLAIN),  # pylint: disable=protected-access
    ("not analysed", "NOT ANALYSED", card._CAUTION),  # pylint: disable=protected-access
    ("warned", "WARNING", card._CAUTION),  # pylint: disable=protected-access
])
def test_the_card_says_the_finding_first_in_large_type(released_model, kind, first, colour):
  info = runtime.LiteModel(released_model).info
  head, foot = card.lines(RESULTS[kind], info)
  lines = head + foot
  text, size, shown = head[0]
  assert (text, shown) == (first, colour)
  # Legible in a PACS thumbnail of 128 px: at least 8 px high there.
  assert size * 128 / card.SIDE >= 8
  words = " ".join(t for t, _, _ in lines)
  assert "NOT FOR DIAGNOSTIC USE" in words and "released model" in words
  if kind == "positive":
    assert "p = 0.82, threshold 0.375; likelier bacterial" in words
  if kind == "negative":
    assert "p = 0.12, threshold 0.375" in words and "likelier" not in words
  if kind == "warned":  # the whole warning, before the call
    texts = [t for t, _, _ in head]
    call = texts.index("NO PNEUMONIA SUSPECTED")
    assert " ".join(texts[1:call]) == RESULTS[kind]["warning"]
  rgb = card.render(np.full((300, 250), 128, np.uint8), RESULTS[kind], info)
  assert rgb.shape == (card.SIDE, card.SIDE, 3) and rgb.dtype == np.uint8
  head = rgb[:card.SIDE // 8].reshape(-1, 3)
  assert (np.abs(head.astype(int) - colour).sum(axis=1) < 60).any()  # the line is drawn
  assert (rgb[card.SIDE // 2] == 128).all(axis=1).any()  # the film's thumbnail is there


def test_each_film_gets_its_card_in_its_study_and_the_card_is_not_read_again(
    released_model, tmp_path):
  film = dicom_files.study_film(91)
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address,
                      result_card=True) as node:
      assert send(node.ports.dicom, [film]) == [0x0000]
      assert node.wait_idle(120)
      (cards,) = [d for d in pacs.received if d.Modality != "SR"]
      assert len(pacs.reports()) == 1
      # A PACS rule that routes it back: acknowledged, not read.
      out = io.BytesIO()
      cards.save_as(out, enforce_file_format=True)
      assert send(node.ports.dicom, [out.getvalue()]) == [0x0000]
      assert node.wait_idle(60) and len(node.spool.recent(10)) == 1
  finally:
    pacs.stop()
  source = pydicom.dcmread(io.BytesIO(film))
  assert cards.StudyInstanceUID == source.StudyInstanceUID
  assert cards.SeriesDescription == report.CARD_SERIES_DESCRIPTION
  assert cards.SeriesNumber == report.CARD_SERIES_NUMBER and cards.BurnedInAnnotation == "YES"
  assert cards.pixel_array.shape == (card.SIDE, card.SIDE, 3)
  assert report.is_own_output(cards)
