import pytest

from cxr_edge.core import schema


@pytest.mark.parametrize("name, expected", [
    ("person1234_bacteria_5678.jpeg", "person1234"),
    ("person447_virus_921_1.jpeg", "person447"),
    ("IM-0115-0001.jpeg", "im-0115"),
    ("IM-0429-0001-0002.jpeg", "im-0429"),
    ("NORMAL2-IM-0007-0001.jpeg", "normal2-im-0007"),
    ("PERSON12_virus_1.jpeg", "person12"),  # one patient whatever the case
    ("normal2-im-0007-0001.jpeg", "normal2-im-0007"),
    ("scan_001.png", None),
    ("personX_bacteria.jpeg", None),
    ("IM.jpeg", None),
])
def test_parse_patient_id(name, expected):
  assert schema.parse_patient_id(name) == expected


def test_labels_sorted_and_indexed():
  assert list(schema.LABELS) == sorted(schema.LABELS)
  assert schema.LABEL_TO_INDEX == {"NORMAL": 0, "PNEUMONIA": 1}


def test_class_from_dirname_is_case_insensitive():
  assert schema.class_from_dirname("pneumonia") == "PNEUMONIA"
  assert schema.class_from_dirname("Normal") == "NORMAL"
  assert schema.class_from_dirname("train") is None


def test_shard_name():
  assert schema.shard_name("train", 3, 8) == "train-00003-of-00008.tfrecord"


@pytest.mark.parametrize("name, expected", [
    ("person1234_bacteria_5678.jpeg", "BACTERIAL"),
    ("PERSON447_Virus_921_1.jpeg", "VIRAL"),
    ("IM-0115-0001.jpeg", None),
    ("person12_covid_3.jpeg", None),
    ("my_virus_film.jpeg", None),
])
def test_parse_subtype_reads_the_release_names_only(name, expected):
  assert schema.parse_subtype(name) == expected


def test_subtype_words_and_targets():
  assert [schema.subtype_from_text(w) for w in ("Bacterial", " virus ", "", "VIRAL")] == [
      "BACTERIAL", "VIRAL", None, "VIRAL"]
  with pytest.raises(ValueError, match="'fungal' is not one of bacterial, viral"):
    schema.subtype_from_text("fungal")
  # The subtype task's targets; every class list starts with NORMAL (p_pneumonia = 1 - p0).
  assert [schema.subtype_target(*a) for a in (("NORMAL", None), ("PNEUMONIA", "BACTERIAL"),
                                              ("PNEUMONIA", "VIRAL"), ("PNEUMONIA", None))] == [
      0, 1, 2, schema.TARGET_PNEUMONIA_UNKNOWN]
  assert all(c[0] == "NORMAL" for c in schema.TASK_CLASSES.values())
  assert schema.TASK_CLASSES["subtype"][1:] == schema.SUBTYPES
