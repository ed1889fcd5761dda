import os
import shutil

import pytest

from cxr_edge.pipeline import records


@pytest.fixture
def data_dir(sample_records, tmp_path):
  out = str(tmp_path / "rec")
  shutil.copytree(sample_records, out)
  return out


def test_sound_shards_pass(data_dir):
  records.check_shards(data_dir, ("train", "val", "test"))


def test_empty_shard_is_refused(data_dir):
  path = records.shard_paths(data_dir, "train")[1]
  open(path, "wb").close()
  with pytest.raises(ValueError, match=f"{os.path.basename(path)} has 0 bytes"):
    records.check_shards(data_dir, ("train",), hashes=False)


def test_swapped_train_and_val_shards_are_refused(data_dir):
  train, val = records.shard_paths(data_dir, "train")[0], records.shard_paths(data_dir, "val")[0]
  os.rename(train, train + ".x")
  os.rename(val, train)
  os.rename(train + ".x", val)
  with pytest.raises(ValueError, match="bytes, the manifest says"):
    records.check_shards(data_dir, ("train", "val"), hashes=False)


def test_same_size_alteration_is_found_by_hash_unless_skipped(data_dir):
  path = records.shard_paths(data_dir, "val")[0]
  data = bytearray(open(path, "rb").read())
  data[-5] ^= 0xFF
  open(path, "wb").write(bytes(data))
  records.check_shards(data_dir, ("val",), hashes=False)  # sizes alone cannot see it
  with pytest.raises(ValueError, match="sha256 differs"):
    records.check_shards(data_dir, ("val",))
  records.check_shards(data_dir, ("train",))  # other splits are not its concern
