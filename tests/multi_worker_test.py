"""Multi-worker training on localhost: two processes, MultiWorkerMirroredStrategy."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(sample_records, tmp_path):
  cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
  model_dir = tmp_path / "m"
  procs = []
  try:
    for index in range(2):
      env = dict(os.environ, TF_CONFIG=json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": index}}),
                 TMPDIR=str(tmp_path / f"tmp{index}"))
      os.makedirs(env["TMPDIR"])
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "model.train", f"--data_dir={sample_records}",
           f"--model_dir={model_dir}", "--model=seed_cnn", "--image_size=48", "--width=0.25",
           "--epochs=2", "--steps_per_epoch=3", "--batch_size=8", "--strategy=multi_worker"],
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  losses = [re.findall(r"epoch \d/2: loss ([0-9.]+)", err) for _, err in outputs]
  assert len(losses[0]) == 2 and losses[0] == losses[1]  # one model, in step
  assert "2 replica(s)" in outputs[0][1] and "sharded by record" in outputs[0][1]
  assert "model in" in outputs[0][0] and "chief worker writes the run" in outputs[1][0]
  assert {"model.keras", "model_info.json", "history.json"} <= set(os.listdir(model_dir))
  assert json.load(open(model_dir / "model_info.json"))["epochs"] == 2
  assert os.listdir(tmp_path / "tmp1") == []  # the other worker's scratch is gone

