import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import json
import os
import shutil

from absl import flags
import tensorflow as tf

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib
from cxr_edge.pipeline import verify_lib
from tests import dicom_files
from tests.conftest import (SAMPLE_DIR, image_bytes, make_tree, parsed_flags, require_shared,
                            run_main, write_file)


def _records(path):
  return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_end_to_end_conversion_and_verify(tmp_path):
  src = make_tree(str(tmp_path / "in" / "train"), patients_per_class=10)
  # The release layout: train/ and val/ are pooled; a nested lower-case class folder.
  make_tree(str(tmp_path / "in" / "val"), patients_per_class=2)
  write_file(str(tmp_path / "in" / "test" / "pneumonia" / "person900_bacteria_1.png"),
             image_bytes("PNG", "RGBA", seed=99))
  # Bad input, each kind; all must be accounted for.
  write_file(str(tmp_path / "in" / "train" / "NORMAL" / "empty.jpeg"), b"")
  write_file(str(tmp_path / "in" / "train" / "NORMAL" / "notes.txt"), b"not an image")
  write_file(str(tmp_path / "in" / "train" / "NORMAL" / "cut.jpeg"), image_bytes(size=(64, 64))[:300])
  write_file(str(tmp_path / "in" / "stray" / "x.jpeg"), image_bytes(seed=5))
  out = str(tmp_path / "out")
  # 0.7/0.15/0.15: at 0.1 this small tree leaves the test split without a NORMAL patient.
  result = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=out, split_ratios=(0.7, 0.15, 0.15),
      num_shards=3, num_workers=2))
  m = result.manifest

  assert m["num_files_found"] == 10 * 4 + 2 * 4 + 1 + 4
  assert m["num_written"] == 49
  reasons = {r["path"]: r["reason"] for r in m["rejected"]}
  assert reasons["train/NORMAL/empty.jpeg"] == image_io.REASON_EMPTY
  assert reasons["train/NORMAL/notes.txt"] == image_io.REASON_NOT_IMAGE
  assert reasons["train/NORMAL/cut.jpeg"].startswith(image_io.REASON_CORRUPT)
  assert reasons["stray/x.jpeg"] == image_io.REASON_UNKNOWN_CLASS
  assert m["num_written"] + len(m["rejected"]) == m["num_files_found"]

  names = sorted(os.listdir(out))
  assert names[-1] == "val-00000-of-00001.tfrecord"
  assert "train-00002-of-00003.tfrecord" in names
  assert schema.MANIFEST_NAME in names and schema.LABELS_NAME in names
  assert not [n for n in names if n.endswith(".incomplete")]

  seen = []
  for split in schema.SPLITS:
    for shard in m["splits"][split]["shards"]:
      recs = _records(os.path.join(out, shard["file"]))
      assert len(recs) == shard["records"]
      for ex in recs:
        f = ex.features.feature
        assert tuple(sorted(f.keys())) == schema.ALL_KEYS
        seen.append(f[schema.KEY_FILENAME].bytes_list.value[0].decode())
        if seen[-1].endswith(".png"):
          assert f[schema.KEY_FORMAT].bytes_list.value[0] == b"png"
          assert f[schema.KEY_CHANNELS].int64_list.value[0] == 4
          assert f[schema.KEY_LABEL].int64_list.value[0] == 1
          assert f[schema.KEY_PATIENT].bytes_list.value[0] == b"person900"
  assert len(seen) == len(set(seen)) == 49  # each image written exactly once
  assert verify_lib.verify(out) == {s: m["splits"][s]["images"] for s in schema.SPLITS}


def test_deterministic_bytes_and_seed_changes_split(tmp_path):
  src = make_tree(str(tmp_path / "in"), patients_per_class=15)
  a = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "a"), seed=1, num_shards=2, num_workers=1))
  b = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "b"), seed=1, num_shards=2, num_workers=2))
  c = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "c"), seed=2, num_shards=2, num_workers=2))
  sha = lambda r: [s["sha256"] for sp in schema.SPLITS for s in r.manifest["splits"][sp]["shards"]]
  assert sha(a) == sha(b)
  for name in os.listdir(tmp_path / "a"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
  assert sha(a) != sha(c)


def test_refuses_non_empty_output_unless_overwrite(tmp_path, image_tree):
  out = tmp_path / "out"
  out.mkdir()
  (out / "something").write_text("x")
  with pytest.raises(errors.ConversionError, match="not empty"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=image_tree, output_dir=str(out), num_workers=1))
  # A previous conversion with more shards: stale shards must go, foreign files stay.
  (out / "train-00000-of-00009.tfrecord").write_bytes(b"stale")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=str(out), num_workers=1, overwrite=True))
  assert not (out / "train-00000-of-00009.tfrecord").exists()
  assert (out / "something").exists()
  verify_lib.verify(str(out))
  # The user's own files that look a little like ours stay too: a dataset of theirs, a
  # draft, a folder named like a shard, a stale temporary of ours goes.
  (out / "my_own_dataset.tfrecord").write_bytes(b"mine")
  (out / "draft.incomplete").write_bytes(b"mine")
  (out / "archive.tfrecord").mkdir()
  (out / "archive.tfrecord" / "keep.txt").write_text("mine")
  (out / "val-00000-of-00001.tfrecord.incomplete").write_bytes(b"stale")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=str(out), num_workers=1, overwrite=True))
  for mine in ("my_own_dataset.tfrecord", "draft.incomplete", "archive.tfrecord/keep.txt"):
    assert (out / mine).exists(), mine
  assert not (out / "val-00000-of-00001.tfrecord.incomplete").exists()
  verify_lib.verify(str(out))


def test_missing_input_and_no_class_folders(tmp_path):
  with pytest.raises(errors.ConversionError, match="not a directory"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(tmp_path / "nope"), output_dir=str(tmp_path / "out")))
  write_file(str(tmp_path / "flat" / "a.jpeg"), image_bytes())
  with pytest.raises(errors.ConversionError, match="no class folders"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(tmp_path / "flat"), output_dir=str(tmp_path / "out")))


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, image_tree, monkeypatch):
  out = tmp_path / "out"
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=str(out), num_workers=1))
  calls = {"n": 0}
  real = convert_lib._make_example  # pylint: disable=protected-access

  def dying(*args):
    calls["n"] += 1
    if calls["n"] == 10:
      raise KeyboardInterrupt
    return real(*args)

  monkeypatch.setattr(convert_lib, "_make_example", dying)
  with pytest.raises(KeyboardInterrupt):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=image_tree, output_dir=str(out), num_workers=1, overwrite=True))
  names = os.listdir(out)
  assert schema.MANIFEST_NAME not in names  # the old manifest went first
  with pytest.raises(verify_lib.VerificationError, match="manifest"):
    verify_lib.verify(str(out))


def test_image_size_reencodes_large_images(tmp_path):
  src = make_tree(str(tmp_path / "in"), patients_per_class=3, size=(64, 48))
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "out"), split_ratios=(0.4, 0.3, 0.3),
      image_size=32, num_workers=1)).manifest  # 3 patients a class: one per split
  for shard in m["splits"]["train"]["shards"]:
    for ex in _records(os.path.join(tmp_path, "out", shard["file"])):
      f = ex.features.feature
      assert (f[schema.KEY_HEIGHT].int64_list.value[0], f[schema.KEY_WIDTH].int64_list.value[0]) == (24, 32)
      img = tf.io.decode_image(f[schema.KEY_ENCODED].bytes_list.value[0])
      assert img.shape[:2] == (24, 32)
  assert m["image_size"] == 32


def test_job_cli_errors_are_one_line(tmp_path):
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.pipeline.convert", input_dir=f"{tmp_path}/missing", output_dir=f"{tmp_path}/o")
  assert str(e.value.code).startswith("cxr-convert: error: --input_dir")
  assert "\n" not in str(e.value.code)
  with pytest.raises(flags.IllegalFlagValueError, match="sum to 1"):
    with parsed_flags("cxr_edge.pipeline.convert", split_ratios="0.5,0.5,0.5"):
      pass


def test_cli_converts_and_verifies_sample(tmp_path, capsys):
  out = str(tmp_path / "o")
  run_main("cxr_edge.pipeline.convert", input_dir=SAMPLE_DIR, output_dir=out)
  assert "rejected 1" in capsys.readouterr().out  # data/sample/README.md has no class folder
  run_main("cxr_edge.pipeline.verify", tfrecord_dir=out)
  assert "OK" in capsys.readouterr().out
  with open(os.path.join(out, schema.MANIFEST_NAME)) as f:
    m = json.load(f)
  assert m["num_written"] == 301


@pytest.mark.slow
def test_shared_data_split_is_stratified_within_1_5_points(tmp_path):
  shared = require_shared()
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=shared, output_dir=str(tmp_path / "out"), num_workers=2)).manifest
  assert m["num_written"] == 5216
  for label in schema.LABELS:
    total = sum(m["splits"][s]["classes"][label]["images"] for s in schema.SPLITS)
    for s in schema.SPLITS:
      share = m["splits"][s]["classes"][label]["images"] / total
      assert abs(share - m["split_ratios"][s]) <= 0.015, (label, s, share)
  verify_lib.verify(str(tmp_path / "out"))


def test_identical_bytes_under_both_labels_are_rejected(tmp_path, image_tree):
  same = image_bytes(size=(40, 32), seed=999)
  write_file(os.path.join(image_tree, "NORMAL", "IM-9999-0001.jpeg"), same)
  write_file(os.path.join(image_tree, "PNEUMONIA", "person999_virus_0.jpeg"), same)
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  conflicts = sorted(r["path"] for r in m["rejected"]
                     if r["reason"].startswith(image_io.REASON_CONFLICT))
  assert conflicts == ["NORMAL/IM-9999-0001.jpeg", "PNEUMONIA/person999_virus_0.jpeg"]
  assert m["num_written"] == 48  # the tree's own images, all kept


def test_a_split_without_both_classes_is_refused(tmp_path):
  make_tree(str(tmp_path / "in"), patients_per_class=6)
  shutil.rmtree(tmp_path / "in" / "PNEUMONIA")
  with pytest.raises(errors.ConversionError, match="would hold no PNEUMONIA image") as e:
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_workers=1))
  assert "12 NORMAL, 0 PNEUMONIA" in str(e.value)
  assert not os.path.exists(tmp_path / "out" / schema.MANIFEST_NAME)


def _reasons(manifest):
  return {r["path"]: r["reason"] for r in manifest["rejected"]}


def test_symlinked_folders_are_followed_once_and_loops_reported(tmp_path):
  make_tree(str(tmp_path / "in"))
  make_tree(str(tmp_path / "elsewhere" / "NORMAL"), patients_per_class=0)
  write_file(str(tmp_path / "elsewhere" / "NORMAL" / "IM-0900-0001.jpeg"), image_bytes(seed=900))
  os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")
  os.symlink(tmp_path / "in", tmp_path / "in" / "PNEUMONIA" / "loop")
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  assert m["num_written"] == 48 + 1  # the linked folder's image is converted
  assert _reasons(m) == {"PNEUMONIA/loop/": image_io.REASON_LOOP}


def test_unreadable_folders_are_listed_not_skipped(tmp_path, monkeypatch):
  make_tree(str(tmp_path / "in"))
  locked = tmp_path / "in" / "NORMAL" / "locked"
  write_file(str(locked / "IM-0901-0001.jpeg"), image_bytes(seed=901))
  real_scandir = os.scandir

  def scandir(path="."):
    # chmod 000 cannot lock out root (CI may run as root): fail as the kernel would.
    if os.fspath(path) == str(locked):
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  assert _reasons(m) == {"NORMAL/locked/": f"{image_io.REASON_FOLDER}: Permission denied"}
  assert m["num_files_found"] == 48 + 1 and m["num_written"] == 48


def test_non_utf8_file_name_is_rejected_and_the_rest_converted(tmp_path):
  make_tree(str(tmp_path / "in"))
  name = os.fsencode(str(tmp_path / "in" / "NORMAL")) + b"/IM-0902-\xff\xfe.jpeg"
  with open(name, "wb") as f:
    f.write(image_bytes(seed=902))
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  assert _reasons(m) == {"NORMAL/IM-0902-\\xff\\xfe.jpeg": image_io.REASON_NAME}
  assert m["num_written"] == 48
  json.dumps(m, ensure_ascii=False).encode("utf-8")  # the manifest is valid UTF-8
  verify_lib.verify(str(tmp_path / "out"))


def test_patient_ids_are_case_insensitive(tmp_path):
  make_tree(str(tmp_path / "in"))
  for k, name in enumerate(["PERSON77_virus_0.jpeg", "person77_virus_1.jpeg",
                            "Person77_bacteria_2.jpeg"]):
    write_file(str(tmp_path / "in" / "PNEUMONIA" / name), image_bytes(seed=770 + k))
  out = str(tmp_path / "out")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=out, num_workers=1))
  splits = {}
  for path in sorted(os.listdir(out)):
    if path.endswith(schema.SHARD_SUFFIX):
      for ex in _records(os.path.join(out, path)):
        feats = ex.features.feature
        patient = feats[schema.KEY_PATIENT].bytes_list.value[0].decode()
        if patient == "person77":
          splits.setdefault(path.split("-")[0], 0)
          splits[path.split("-")[0]] += 1
  assert sum(splits.values()) == 3 and len(splits) == 1, splits


def test_a_file_removed_between_the_passes_is_rejected_and_the_run_completes(
    tmp_path, monkeypatch):
  make_tree(str(tmp_path / "in"))
  victim = tmp_path / "in" / "NORMAL" / "IM-0003-0001.jpeg"
  changed = tmp_path / "in" / "PNEUMONIA" / "person4_virus_1.jpeg"
  real = convert_lib._drop_conflicting_labels

  def between_passes(records):  # runs after the inspect pass, before the write pass
    os.remove(victim)
    write_file(str(changed), image_bytes(seed=12345))
    return real(records)

  monkeypatch.setattr(convert_lib, "_drop_conflicting_labels", between_passes)
  out = str(tmp_path / "out")
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(tmp_path / "in"), output_dir=out, num_workers=1)).manifest
  reasons = _reasons(m)
  assert set(reasons) == {"NORMAL/IM-0003-0001.jpeg", "PNEUMONIA/person4_virus_1.jpeg"}
  assert all(r.startswith(image_io.REASON_CHANGED) for r in reasons.values())
  assert m["num_written"] == 46
  assert sum(m["splits"][s]["images"] for s in schema.SPLITS) == 46
  verify_lib.verify(out)  # shard counts and class counts match what was written


def _dicom_tree(root, patients=12, films_each=2):
  """Clinic-style names (no release pattern); PatientID tags, in varying case."""
  from tests.conftest import dicom_bytes, film_pixels  # pylint: disable=g-import-not-at-top
  n = 0
  for label in ("NORMAL", "PNEUMONIA"):
    for p in range(patients):
      for k in range(films_each):
        n += 1
        tag = f"MRN{label[0]}{p:03d}"
        write_file(os.path.join(root, label, f"ACC{n:06d}.dcm"),
                   dicom_bytes(film_pixels(n, (40, 32)), patient_id=tag.lower() if k else tag))
  return root


def test_dicom_films_convert_with_hashed_patient_ids(tmp_path):
  src = _dicom_tree(str(tmp_path / "in"))
  out = str(tmp_path / "out")
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=out, num_workers=1, patient_id_salt="site-secret")).manifest
  assert m["num_written"] == 48 and m["source_formats"] == {"dicom": 48}
  assert m["patient_ids"]["sources"]["dicom_patient_id"] == 48
  assert "warning" not in m["patient_ids"]
  by_patient = {}
  raw = b""
  for name in sorted(os.listdir(out)):
    if name.endswith(schema.SHARD_SUFFIX):
      raw += open(os.path.join(out, name), "rb").read()
      for ex in _records(os.path.join(out, name)):
        f = ex.features.feature
        assert f[schema.KEY_SOURCE_FORMAT].bytes_list.value[0] == b"dicom"
        assert f[schema.KEY_FORMAT].bytes_list.value[0] == b"png"
        patient = f[schema.KEY_PATIENT].bytes_list.value[0].decode()
        by_patient.setdefault(patient, set()).add(name.split("-")[0])
  assert len(by_patient) == 24 and all(p.startswith("h-") for p in by_patient)
  assert all(len(splits) == 1 for splits in by_patient.values())  # MRN and mrn: one patient
  assert b"MRN" not in raw.upper() and b"PAT" not in raw  # never stored in clear
  verify_lib.verify(out)
  again = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "again"), num_workers=1,
      patient_id_salt="site-secret"))
  assert again.manifest["splits"] == m["splits"]  # the same salt reproduces the output


def test_few_recognisable_patient_ids_warn_and_are_recorded(tmp_path, caplog):
  src = tmp_path / "own"
  for k in range(24):  # names a clinic would use: no release pattern, no DICOM tag
    for label in ("normal", "pneumonia"):
      write_file(str(src / label / f"ACC1{k:05d}.jpg"), image_bytes(seed=k * 2 + (label > "o")))
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(src), output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  assert m["patient_ids"]["sources"]["none"] == 48
  assert "only 0 of 48 files have a recognisable patient id" in m["patient_ids"]["warning"]
  assert any("recognisable patient id" in r.getMessage() for r in caplog.records)


def test_metadata_csv_gives_patients_and_labels(tmp_path):
  flat = tmp_path / "flat"  # no class folders: the CSV says what each file is
  rows = ["path,patient_id,label,study_date"]
  for k in range(48):
    write_file(str(flat / f"img{k:03d}.jpg"), image_bytes(seed=500 + k))
    label = "normal" if (k // 2) % 2 else "PNEUMONIA"  # any case
    rows.append(f"img{k:03d}.jpg,MRN{k // 2:04d},{label},2024-01-0{k % 9 + 1}")
  write_file(str(flat / "unlisted.jpg"), image_bytes(seed=999))
  rows.append("gone.jpg,MRN9999,NORMAL,")
  csv_path = write_file(str(tmp_path / "films.csv"), ("\n".join(rows) + "\n").encode())
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(flat), output_dir=str(tmp_path / "out"), num_workers=1,
      metadata_csv=csv_path)).manifest
  assert _reasons(m) == {"unlisted.jpg": image_io.REASON_NOT_LISTED,
                         "gone.jpg": image_io.REASON_LISTED_MISSING}
  assert m["num_written"] == 48 and m["patient_ids"]["sources"]["metadata_csv"] == 48
  assert sum(m["splits"][s]["patients"] for s in schema.SPLITS) == 24  # two films each
  for split in schema.SPLITS:
    assert m["splits"][split]["classes"]["NORMAL"]["images"] > 0
  bad = write_file(str(tmp_path / "bad.csv"), b"path,patient_id,label\nimg000.jpg,1,COVID\n")
  with pytest.raises(errors.ConversionError, match="line 2: label 'COVID'"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(flat), output_dir=str(tmp_path / "o2"), metadata_csv=bad))
  short = write_file(str(tmp_path / "short.csv"), b"path,label\nimg000.jpg,NORMAL\n")
  with pytest.raises(errors.ConversionError, match="lacks column"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(flat), output_dir=str(tmp_path / "o3"), metadata_csv=short))


def test_metadata_csv_paths_are_normalised_and_a_header_alone_is_named(tmp_path):
  from cxr_edge.core import folders  # pylint: disable=g-import-not-at-top
  listed = write_file(str(tmp_path / "a.csv"),
                      b"path,patient_id,label\n./a/./f.jpeg,1,NORMAL\nb//g.jpeg,2,PNEUMONIA\n")
  assert sorted(folders.read_metadata_csv(listed)) == ["a/f.jpeg", "b/g.jpeg"]
  header = write_file(str(tmp_path / "h.csv"), b"path,patient_id,label\n")
  with pytest.raises(errors.ConversionError, match="has its header but no rows"):
    folders.read_metadata_csv(header)
  twice = write_file(str(tmp_path / "t.csv"),
                     b"path,patient_id,label\na/f.jpeg,1,NORMAL\n./a/f.jpeg,1,NORMAL\n")
  with pytest.raises(errors.ConversionError, match="line 3: 'a/f.jpeg' is listed twice"):
    folders.read_metadata_csv(twice)


def test_a_malformed_dicom_is_rejected_with_its_reason_and_the_rest_converted(tmp_path):
  src = make_tree(str(tmp_path / "in"))
  write_file(str(tmp_path / "in" / "PNEUMONIA" / "bad.dcm"),
             dicom_files.malformed(dicom_files.set_raw("WindowCenter", "NaN")))
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "out"), num_workers=1)).manifest
  assert [r["path"] for r in m["rejected"]] == ["PNEUMONIA/bad.dcm"]
  assert m["rejected"][0]["reason"].startswith("invalid DICOM attribute: WindowCenter")
  assert m["num_written"] == 48


def test_a_second_conversion_into_the_same_folder_is_refused(tmp_path, image_tree):
  from cxr_edge.core import locks  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "out")
  with locks.exclusive(out, "cxr-convert", "--output_dir"):  # the first, still running
    with pytest.raises(errors.CxrError, match="in use by another process"):
      convert_lib.convert(convert_config.ConvertOptions(
          input_dir=image_tree, output_dir=out, num_workers=1))
  assert os.listdir(out) == []  # the second wrote nothing
  convert_lib.convert(convert_config.ConvertOptions(  # and after it, one may
      input_dir=image_tree, output_dir=out, num_workers=1))
  verify_lib.verify(out)


def test_a_full_disk_is_one_error_and_leaves_no_manifest(tmp_path, image_tree, monkeypatch):
  def full(self, record):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  monkeypatch.setattr(tf.io.TFRecordWriter, "write", full)
  out = tmp_path / "out"
  with pytest.raises(errors.ConversionError, match="No space left on device") as e:
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=image_tree, output_dir=str(out), num_workers=1))
  assert "\n" not in str(e.value) and "incomplete" in str(e.value)
  assert not (out / schema.MANIFEST_NAME).exists()


def test_the_options_check_the_split_ratios_once_for_both_converters():
  options = convert_config.ConvertOptions(input_dir="i", output_dir="o",
                                          split_ratios=(1, 0, 0))
  assert options.split_ratios == (1.0, 0.0, 0.0)
  for bad, says in (((0.5, 0.5, 0.5), "sum to 1"), ((0.5, 0.5), "three"),
                    ((0, 0.5, 0.5), "train ratio must be > 0")):
    with pytest.raises(ValueError, match=says):
      convert_config.ConvertOptions(input_dir="i", output_dir="o", split_ratios=bad)


def _subtypes_of(output_dir):
  found = {}
  for split in schema.SPLITS:
    for name in sorted(os.listdir(output_dir)):
      if name.startswith(split + "-"):
        for ex in _records(os.path.join(output_dir, name)):
          f = ex.features.feature
          found[f[schema.KEY_FILENAME].bytes_list.value[0].decode()] = (
              f[schema.KEY_SUBTYPE].bytes_list.value[0].decode())
  return found


def test_subtypes_come_from_release_names_are_counted_and_stratified(tmp_path):
  root = str(tmp_path / "in")
  for p in range(30):
    write_file(os.path.join(root, "NORMAL", f"IM-{p:04d}-0001.jpeg"), image_bytes(seed=p))
    kind = "bacteria" if p % 3 else "virus"  # 20 bacterial, 10 viral patients
    write_file(os.path.join(root, "PNEUMONIA", f"person{p}_{kind}_1.jpeg"),
               image_bytes(seed=100 + p))
  write_file(os.path.join(root, "PNEUMONIA", "scan_9.jpeg"), image_bytes(seed=999))
  out = str(tmp_path / "out")
  m = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=root, output_dir=out, num_workers=1, split_ratios=(0.6, 0.2, 0.2))).manifest
  assert m["format_version"] == 3
  stored = _subtypes_of(out)
  assert stored["PNEUMONIA/person1_bacteria_1.jpeg"] == "BACTERIAL"
  assert stored["PNEUMONIA/person3_virus_1.jpeg"] == "VIRAL"
  assert stored["PNEUMONIA/scan_9.jpeg"] == "" and stored["NORMAL/IM-0001-0001.jpeg"] == ""
  counts = {s: {k: v["images"] for k, v in m["splits"][s]["subtypes"].items()}
            for s in schema.SPLITS}
  # Stratified by subtype: 20 bacterial and 10 viral films at 0.6/0.2/0.2.
  assert [counts[s]["BACTERIAL"] for s in schema.SPLITS] == [12, 4, 4]
  assert [counts[s]["VIRAL"] for s in schema.SPLITS] == [6, 2, 2]
  assert sum(counts[s]["unknown"] for s in schema.SPLITS) == 1
  verify_lib.verify(out)  # checks every record's subtype against the manifest


def test_metadata_csv_subtype_column_overrides_names_and_allows_unknown(tmp_path):
  flat = tmp_path / "flat"
  rows = ["path,patient_id,label,subtype"]
  for k in range(24):
    write_file(str(flat / f"person{k}_bacteria_1.jpg"), image_bytes(seed=700 + k))
    label, subtype = (("NORMAL", "") if k % 3 == 0 else
                      ("PNEUMONIA", "Viral" if k % 3 == 1 else ""))
    rows.append(f"person{k}_bacteria_1.jpg,p{k},{label},{subtype}")
  csv_path = write_file(str(tmp_path / "films.csv"), ("\n".join(rows) + "\n").encode())
  out = str(tmp_path / "out")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=str(flat), output_dir=out, num_workers=1, metadata_csv=csv_path))
  stored = _subtypes_of(out)
  assert stored["person1_bacteria_1.jpg"] == "VIRAL"  # the column wins over the name
  assert stored["person2_bacteria_1.jpg"] == "BACTERIAL"  # blank: the name's
  assert stored["person0_bacteria_1.jpg"] == ""  # NORMAL: never a subtype
  bad = write_file(str(tmp_path / "bad.csv"),
                   b"path,patient_id,label,subtype\nperson0_bacteria_1.jpg,1,NORMAL,viral\n")
  with pytest.raises(errors.ConversionError, match="line 2: a NORMAL film has no subtype"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(flat), output_dir=str(tmp_path / "o2"), metadata_csv=bad))
  odd = write_file(str(tmp_path / "odd.csv"),
                   b"path,patient_id,label,subtype\nperson0_bacteria_1.jpg,1,PNEUMONIA,fungal\n")
  with pytest.raises(errors.ConversionError, match="line 2: subtype 'fungal'"):
    convert_lib.convert(convert_config.ConvertOptions(
        input_dir=str(flat), output_dir=str(tmp_path / "o3"), metadata_csv=odd))
