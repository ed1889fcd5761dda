"""Labelled class-folder trees (NORMAL/, PNEUMONIA/ at any depth) outside a conversion.

The one lister of such folders for every job that scores films it does not train on:
external validation during training, cxr-evaluate --image_dir, the export report and
cxr-calibrate on a clinic's films. TensorFlow-free (the calibration tool runs on the
device); class folders and patient ids follow cxr-convert's rules.
"""
import csv
import dataclasses
import hashlib
import hmac
import io
import os
import posixpath
import secrets
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.core.errors import ConversionError


@dataclasses.dataclass(frozen=True)
class SourceFile:
  relpath: str  # relative to input_dir, with "/" separators
  label: Optional[str]  # None when no class folder is found above the file
  # Why this entry cannot be read at all (an unreadable or repeated folder, a file name
  # that is not UTF-8); relpath is then printable (escaped) rather than openable.
  problem: Optional[str] = None
  # A PNEUMONIA file's subtype (schema.SUBTYPES) where known, else None.
  subtype: Optional[str] = None


class Row(NamedTuple):
  """One file's --metadata_csv row."""
  patient_id: str  # "" when the row gives none
  label: str
  subtype: Optional[str]  # None when the row gives none (or the CSV has no such column)


# read_metadata_csv's answer: {path relative to --input_dir: its row}.
Listing = Dict[str, Row]


def scan_input(input_dir: str, flag: str = "--input_dir",
               listed: Optional[Listing] = None) -> List[SourceFile]:
  """Lists every file below input_dir with the class of its nearest class folder.

  Every entry found is accounted for: hidden files (".DS_Store") are listed, to be
  rejected with a reason rather than silently skipped; so are folders that cannot be
  read and file names that are not UTF-8 (with `problem` set). Symbolic links to
  folders are followed, each real folder once, so a link loop cannot recurse.

  Args:
    input_dir: the folder to search.
    flag: the command-line flag that named it, for error messages.
    listed: read_metadata_csv's rows: labels (and subtypes) come from it, not from
      class folders; a file it does not list, or a listed file not found, is
      reported with `problem` set.

  Raises:
    ConversionError: input_dir is missing or unreadable, or (without `listed`) no folder
      below it is a class folder.
  """
  if not os.path.isdir(input_dir):
    raise ConversionError(f"{flag} {input_dir!r} is not a directory")
  found: List[SourceFile] = []
  any_class_dir = False
  seen = set()

  def unreadable(error: OSError) -> None:
    rel = os.path.relpath(error.filename, input_dir)
    if rel == ".":
      raise ConversionError(f"{flag} {input_dir!r} cannot be read: {error.strerror or error}")
    found.append(SourceFile(_printable(rel.replace(os.sep, "/")) + "/", None,
                            f"{image_io.REASON_FOLDER}: {error.strerror or error}"))

  for root, dirs, files in os.walk(input_dir, onerror=unreadable, followlinks=True):
    st = os.stat(root)
    seen.add((st.st_dev, st.st_ino))
    rel_root = os.path.relpath(root, input_dir)
    parts = [] if rel_root == "." else rel_root.split(os.sep)
    dirs.sort()
    for d in list(dirs):
      try:
        st = os.stat(os.path.join(root, d))
      except OSError:
        continue  # os.walk reports it through unreadable()
      if (st.st_dev, st.st_ino) in seen:
        dirs.remove(d)
        found.append(SourceFile(_printable("/".join(parts + [d])) + "/", None,
                                image_io.REASON_LOOP))
    label = class_of(parts)
    any_class_dir = any_class_dir or label is not None
    for name in sorted(files):
      relpath = "/".join(parts + [name])
      printable = _printable(relpath)
      if printable != relpath:
        found.append(SourceFile(printable, label, image_io.REASON_NAME))
      else:
        found.append(source_file(relpath, label, listed))
  return finish_listing(found, listed, any_class_dir, input_dir, flag)


def class_of(folders: Sequence[str]) -> Optional[str]:
  """The class of a file below `folders` (outermost first): the deepest class folder's."""
  for part in reversed(folders):
    label = schema.class_from_dirname(part)
    if label:
      return label
  return None


def source_file(relpath: str, label: Optional[str],
                listed: Optional[Listing]) -> SourceFile:
  """A listed file: its class folder's label, or its --metadata_csv row's if given.

  A PNEUMONIA file's subtype is its row's, else what its name says (the public
  release's person12_virus_4.jpeg), else unknown.
  """
  if listed is not None:
    if relpath not in listed:
      return SourceFile(relpath, None, image_io.REASON_NOT_LISTED)
    label, given = listed[relpath].label, listed[relpath].subtype
  else:
    given = None
  if label != schema.POSITIVE_LABEL:
    return SourceFile(relpath, label)
  return SourceFile(relpath, label,
                    subtype=given or schema.parse_subtype(relpath.rsplit("/", 1)[-1]))


def finish_listing(found: List[SourceFile], listed: Optional[Listing],
                   any_class_dir: bool, input_dir: str, flag: str) -> List[SourceFile]:
  """Adds --metadata_csv rows whose file was not found; refuses a tree without classes."""
  if listed is not None:
    seen_paths = {f.relpath for f in found}
    return found + [SourceFile(rel, None, image_io.REASON_LISTED_MISSING)
                    for rel in sorted(set(listed) - seen_paths)]
  if not any_class_dir:
    raise ConversionError(
        f"{flag} {input_dir!r} holds no class folders (expected sub-folders named "
        f"{' / '.join(schema.LABELS)}, any case, at any depth)")
  return found


def _printable(relpath: str) -> str:
  """relpath itself if it is valid UTF-8, else with its undecodable bytes escaped."""
  try:
    relpath.encode("utf-8")
    return relpath
  except UnicodeEncodeError:  # os.walk maps undecodable bytes to lone surrogates
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Where a patient id came from (the manifest counts them).
ID_FROM_CSV, ID_FROM_DICOM, ID_FROM_NAME, ID_NONE = ("metadata_csv", "dicom_patient_id",
                                                     "file_name", "none")


def patient_id(relpath: str, dicom_tag: Optional[str] = None, listed: Optional[str] = None,
               salt: str = "") -> Tuple[str, str]:
  """The patient of a file and where that came from.

  In order: the id given for it in --metadata_csv, its DICOM PatientID tag (both stored
  only as a salted hash: they are often hospital record numbers), the public release's
  file-name pattern (person1234_…, IM-0115-…; lower-cased so ids compare
  case-insensitively); else the file is its own patient (its path is unique).

  Returns:
    (patient id, one of ID_FROM_CSV, ID_FROM_DICOM, ID_FROM_NAME, ID_NONE).
  """
  for given, source in ((listed, ID_FROM_CSV), (dicom_tag, ID_FROM_DICOM)):
    if given and given.strip():
      key = given.strip().lower().encode("utf-8")
      digest = hmac.new(salt.encode("utf-8"), key, hashlib.sha256).hexdigest()[:20]
      return f"h-{digest}", source
  parsed = schema.parse_patient_id(relpath.rsplit("/", 1)[-1])
  if parsed:
    return parsed, ID_FROM_NAME
  return os.path.splitext(relpath)[0], ID_NONE


# A file list of a million films is about 100 MB; a larger --metadata_csv is refused unread.
MAX_METADATA_CSV_BYTES = 256 * 1024 * 1024


def read_metadata_csv(path: str) -> Listing:
  """--metadata_csv: {relpath: Row} from columns path, patient_id, label[, subtype].

  Paths are relative to --input_dir ("/" separators); labels are class names, any case.
  The optional subtype column gives a PNEUMONIA film's kind (bacterial or viral, any
  case; blank = unknown); a NORMAL film's must be blank. Other columns (e.g.
  study_date) are allowed and ignored.

  Raises:
    ConversionError: unreadable file, missing columns, unknown label or subtype, a
      subtype on a NORMAL row, repeated path.
  """
  try:
    reader = csv.DictReader(io.StringIO(
        image_io.read_file(path, MAX_METADATA_CSV_BYTES).decode("utf-8-sig"), newline=""))
    rows = list(reader)
    columns = set(reader.fieldnames or ())
  except image_io.UnreadableFile as e:
    raise ConversionError(f"--metadata_csv {path!r}: {e}") from None
  except (UnicodeDecodeError, csv.Error) as e:
    raise ConversionError(f"--metadata_csv {path!r} cannot be read: {e}") from None
  missing = {"path", "patient_id", "label"} - columns
  if missing:
    raise ConversionError(f"--metadata_csv {path!r} lacks column(s) {', '.join(sorted(missing))} "
                          "(needs path, patient_id, label)")
  if not rows:
    raise ConversionError(f"--metadata_csv {path!r} has its header but no rows")
  listed: Listing = {}
  for line, row in enumerate(rows, 2):
    label = (row["label"] or "").strip().upper()
    if label not in schema.LABEL_TO_INDEX:
      raise ConversionError(f"--metadata_csv line {line}: label {row['label']!r} is not one of "
                            f"{', '.join(schema.LABELS)}")
    try:
      subtype = schema.subtype_from_text(row.get("subtype") or "")
    except ValueError as e:
      raise ConversionError(f"--metadata_csv line {line}: {e}") from None
    if subtype and label != schema.POSITIVE_LABEL:
      raise ConversionError(f"--metadata_csv line {line}: a {label} film has no subtype "
                            f"({row['subtype']!r})")
    # As the folder scan names files: "./a/./f.jpeg" and "a//f.jpeg" are "a/f.jpeg".
    rel = posixpath.normpath((row["path"] or "").strip().replace("\\", "/"))
    if rel in listed:
      raise ConversionError(f"--metadata_csv line {line}: {rel!r} is listed twice")
    listed[rel] = Row((row["patient_id"] or "").strip(), label, subtype)
  return listed



# DICOM PatientID tags only group a folder's films by patient here (bootstrap intervals);
# reports show their hash under this per-process salt, never the tag itself.
_SALT = secrets.token_hex(16)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
  path: str  # as found (image_dir joined with relpath)
  relpath: str  # relative to image_dir, "/" separators
  label: int  # index into schema.LABELS
  patient_id: str
  subtype: Optional[str] = None  # a PNEUMONIA film's, where its name states it


def list_labelled_images(image_dir: str,
                         check: bool = True) -> Tuple[List[LabelledImage], List[Dict[str, str]]]:
  """Finds the labelled images below image_dir, in a stable (sorted) order.

  Args:
    image_dir: a class-folder tree.
    check: fully decode each file (as cxr-convert does) and skip the unreadable ones.

  Returns:
    (images, skipped): skipped is [{"path", "reason"}] for files outside a class
    folder, unreadable folders, non-UTF-8 names and (with check) unreadable files.

  Raises:
    ConversionError: image_dir is missing or holds no class folder.
  """
  items: List[LabelledImage] = []
  skipped: List[Dict[str, str]] = []
  for f in scan_input(image_dir, flag="--image_dir"):
    path = os.path.join(image_dir, f.relpath)
    if f.problem:
      skipped.append({"path": f.relpath, "reason": f.problem})
      continue
    if f.label is None:
      skipped.append({"path": f.relpath, "reason": image_io.REASON_UNKNOWN_CLASS})
      continue
    tag = None
    if check:
      result = image_io.inspect_image(path)
      if isinstance(result, image_io.Rejection):
        skipped.append({"path": f.relpath, "reason": result.reason})
        continue
      tag = result.patient_tag
    items.append(LabelledImage(path, f.relpath, schema.LABEL_TO_INDEX[f.label],
                               patient_id(f.relpath, tag, salt=_SALT)[0], f.subtype))
  return items, skipped
