"""The one source of truth for record keys, labels, image size and scaling.

Pure Python (no TensorFlow import) so the conversion workers, the TF input pipeline,
the exporter and the TF-free edge runtime (edge/) all read the same constants.
"""
import re
from typing import Dict, Optional, Tuple

# Labels in index order. Sorted, so the label map never depends on folder listing order.
LABELS: Tuple[str, ...] = ("NORMAL", "PNEUMONIA")
LABEL_TO_INDEX: Dict[str, int] = {name: i for i, name in enumerate(LABELS)}
NUM_CLASSES = len(LABELS)
POSITIVE_LABEL = "PNEUMONIA"

# The kind of a PNEUMONIA film, where known (the public release names it in the file
# name: person12_bacteria_3.jpeg, person12_virus_4.jpeg). A film of unknown subtype is
# still a PNEUMONIA film: it trains and scores the binary decision.
SUBTYPES: Tuple[str, ...] = ("BACTERIAL", "VIRAL")
# What a model is trained to tell apart (cxr-train --task): its outputs, in this order.
# Both start with NORMAL, so p_pneumonia is 1 - the first output for either.
TASK_BINARY, TASK_SUBTYPE = "binary", "subtype"
TASKS = (TASK_BINARY, TASK_SUBTYPE)
TASK_CLASSES: Dict[str, Tuple[str, ...]] = {TASK_BINARY: LABELS,
                                            TASK_SUBTYPE: ("NORMAL",) + SUBTYPES}
# The subtype task's training target: an index into TASK_CLASSES["subtype"], or this
# one for a PNEUMONIA film of unknown subtype (its loss is that of PNEUMONIA alone).
TARGET_PNEUMONIA_UNKNOWN = len(TASK_CLASSES[TASK_SUBTYPE])

# tf.train.Example feature keys. Every record has exactly these.
KEY_ENCODED = "image/encoded"
KEY_FORMAT = "image/format"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_LABEL = "image/class/label"
KEY_TEXT = "image/class/text"
KEY_FILENAME = "image/filename"
KEY_PATIENT = "image/patient_id"
KEY_SHA256 = "image/sha256"
# The file's own format when it was windowed to the stored 8-bit PNG (dicom, png16, tiff);
# else the stored format. Records of conversions before it was added read as "".
KEY_SOURCE_FORMAT = "image/source_format"
# A PNEUMONIA film's subtype (one of SUBTYPES), "" when unknown or NORMAL. Records of
# conversions before it was added read as "".
KEY_SUBTYPE = "image/class/subtype"
BYTES_KEYS = (KEY_ENCODED, KEY_FORMAT, KEY_TEXT, KEY_FILENAME, KEY_PATIENT, KEY_SHA256,
              KEY_SOURCE_FORMAT, KEY_SUBTYPE)
# Keys that records of older conversions lack (they parse with "" there).
OPTIONAL_KEYS = (KEY_SOURCE_FORMAT, KEY_SUBTYPE)
INT_KEYS = (KEY_HEIGHT, KEY_WIDTH, KEY_CHANNELS, KEY_LABEL)
ALL_KEYS = tuple(sorted(BYTES_KEYS + INT_KEYS))

SPLITS = ("train", "val", "test")
SHARD_SUFFIX = ".tfrecord"
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.txt"

# Model input: the source article's 150x150, one grayscale channel, scaled to [0, 1].
DEFAULT_IMAGE_SIZE = 150
CHANNELS = 1
SCALE = 1.0 / 255.0
# Bilinear resize with half-pixel centres and no antialiasing: simple enough to
# reproduce exactly in numpy for the edge runtime (edge/runtime.py).
RESIZE_METHOD = "bilinear"

# Source images: what TensorFlow's decoder (and so every runtime) accepts. Pillow's format
# name -> the stored format; Pillow calls some multi-picture camera JPEGs "MPO".
IMAGE_FORMATS: Dict[str, str] = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# What cxr-predict reads from a folder: the above and, windowed to 8 bits by
# core/film.py, DICOM (also files without an extension: see edge/runtime.py) and TIFF.
FILM_EXTENSIONS = IMAGE_EXTENSIONS + (".dcm", ".dicom", ".tif", ".tiff")
# Larger images are refused before decoding (decompression bombs); the public release's
# largest has ~8.4 M pixels.
MAX_PIXELS = 50_000_000
# Larger files are not read at all: a 16-bit 7,000 x 7,000 uncompressed DICOM is 98 MB.
MAX_FILE_BYTES = 256 * 1024 * 1024

# Decoded-image caches of the input pipeline (else a directory for a file cache).
CACHE_MEMORY = "memory"
CACHE_NONE = "none"

# The model package: metadata.json beside the .tflite files and the SavedModel.
METADATA_NAME = "metadata.json"

_PATIENT_PATTERNS = (
  re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1234_bacteria_5678.jpeg
  re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),  # [NORMAL2-]IM-0115-0001.jpeg
)


_SUBTYPE_PATTERN = re.compile(r"^person\d+_(bacteria|virus)_", re.IGNORECASE)
# Spellings a --metadata_csv subtype column may use, lower-cased.
_SUBTYPE_WORDS = {"bacterial": "BACTERIAL", "bacteria": "BACTERIAL", "viral": "VIRAL",
                  "virus": "VIRAL"}


def parse_subtype(filename: str) -> Optional[str]:
  """The subtype a public-release file name states: ``person12_virus_4.jpeg`` -> VIRAL.

  None when the name states none (NORMAL films, other sources' names).
  """
  match = _SUBTYPE_PATTERN.match(filename)
  return _SUBTYPE_WORDS[match.group(1).lower()] if match else None


def subtype_from_text(text: str) -> Optional[str]:
  """A subtype as people write it (bacterial, Bacteria, VIRAL, virus); None if blank.

  Raises:
    ValueError: a non-blank word that is not a subtype.
  """
  word = text.strip().lower()
  if not word:
    return None
  if word not in _SUBTYPE_WORDS:
    raise ValueError(f"subtype {text!r} is not one of {', '.join(s.lower() for s in SUBTYPES)} "
                     "(or blank: unknown)")
  return _SUBTYPE_WORDS[word]


def subtype_target(label: str, subtype: Optional[str]) -> int:
  """The subtype task's target of a film: 0 NORMAL, 1 BACTERIAL, 2 VIRAL, or
  TARGET_PNEUMONIA_UNKNOWN. Also the stratum the splits keep in proportion."""
  if label != POSITIVE_LABEL:
    return 0
  if subtype is None or subtype == "":
    return TARGET_PNEUMONIA_UNKNOWN
  return 1 + SUBTYPES.index(subtype)


def shard_name(split: str, index: int, num_shards: int) -> str:
  """Returns the canonical shard file name, e.g. ``train-00000-of-00008.tfrecord``."""
  return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


# Exactly the names shard_name makes (and nothing a user might call a file of theirs).
SHARD_NAME_PATTERN = re.compile(
    rf"(?:{'|'.join(SPLITS)})-\d{{5}}-of-\d{{5}}{re.escape(SHARD_SUFFIX)}")


def parse_patient_id(filename: str) -> Optional[str]:
  """Extracts the patient id from a file name of the public release.

  Args:
    filename: a base name such as ``person1234_bacteria_5678.jpeg``,
    ``IM-0115-0001.jpeg`` or ``NORMAL2-IM-0007-0001.jpeg``.

  Returns:
    ``person1234``, ``im-0115``, ``normal2-im-0007`` for those examples (lower case:
    ``PERSON12_…`` and ``person12_…`` are one patient and must share a split), or None
    when the name carries no recognisable id (the caller then treats the file as its
    own patient).
  """
  for pattern in _PATIENT_PATTERNS:
    match = pattern.match(filename)
    if match:
      return match.group(1).lower()
  return None


def class_from_dirname(name: str) -> Optional[str]:
  """Maps a folder name to a label, case-insensitively; None if it is not a class."""
  upper = name.upper()
  return upper if upper in LABEL_TO_INDEX else None
