"""Multi-worker training on localhost: two processes, MultiWorkerMirroredStrategy."""
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT

_DEADLINE_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_workers(data_dir, model_dir, tmp_path, epochs, run):
  """Two `cxr-train` workers on fresh loopback ports (edge_cnn: its batch-norm
  statistics are read with a collective op, which all workers must join)."""
  cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
  procs = []
  for index in range(2):
    scratch = tmp_path / f"tmp{run}_{index}"
    os.makedirs(scratch)
    env = dict(os.environ, TMPDIR=str(scratch), TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "cxr_edge.model.train", f"--data_dir={data_dir}",
         f"--model_dir={model_dir}", "--model=edge_cnn", "--image_size=48", "--width=0.25",
         f"--epochs={epochs}", "--steps_per_epoch=3", "--batch_size=8",
         "--strategy=multi_worker"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs):
  """(stdout, stderr) of each process; all are killed if they outlive the deadline."""
  timer = threading.Timer(_DEADLINE_S, lambda: [p.kill() for p in procs])
  timer.start()
  try:
    return [p.communicate() for p in procs]
  finally:
    timer.cancel()
    for p in procs:
      if p.poll() is None:
        p.kill()


def _epochs_logged(stderr, epochs):
  return [int(n) for n in re.findall(rf"epoch (\d+)/{epochs}: loss", stderr)]


def _losses(stderr, epochs):
  return re.findall(rf"epoch \d+/{epochs}: loss ([0-9.]+)", stderr)


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(sample_records, tmp_path):
  model_dir = tmp_path / "m"
  procs = _start_workers(sample_records, model_dir, tmp_path, 2, "a")
  outputs = _finish(procs)
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  losses = [_losses(err, 2) for _, err in outputs]
  assert len(losses[0]) == 2 and losses[0] == losses[1]  # one model, in step
  assert "2 replica(s)" in outputs[0][1] and "sharded by record" in outputs[0][1]
  assert "model in" in outputs[0][0] and "chief worker writes the run" in outputs[1][0]
  assert {"model.keras", "model_info.json", "history.json"} <= set(os.listdir(model_dir))
  assert json.load(open(model_dir / "model_info.json"))["epochs"] == 2
  assert os.listdir(tmp_path / "tmpa_1") == []  # the other worker's scratch is gone


@pytest.mark.slow
def test_a_killed_worker_and_a_restart_resume_from_the_backup(sample_records, tmp_path):
  model_dir = tmp_path / "m"
  epochs = 4
  procs = _start_workers(sample_records, model_dir, tmp_path, epochs, "a")
  timer = threading.Timer(_DEADLINE_S, lambda: [p.kill() for p in procs])
  timer.start()
  try:
    # Once the chief has finished epoch 2 (so epoch 1's backup is on disk), worker 1
    # dies mid-run; the chief then cannot go on, and both are restarted.
    seen = []
    for line in procs[0].stderr:
      seen.append(line)
      if f"epoch 2/{epochs}: loss" in line:
        break
    procs[1].kill()
    procs[0].kill()
    for p in procs:
      p.communicate()
  finally:
    timer.cancel()
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert any(f"epoch 2/{epochs}" in line for line in seen), "".join(seen)[-3000:]
  assert not os.path.exists(model_dir / "model_info.json")
  assert os.listdir(model_dir / "backup")

  restarted = _start_workers(sample_records, model_dir, tmp_path, epochs, "b")
  outputs = _finish(restarted)
  for p, (_, err) in zip(restarted, outputs):
    assert p.returncode == 0, err[-3000:]
  resumed = _epochs_logged(outputs[0][1], epochs)
  # It resumed (epoch 1 is not trained again) and ran to the last epoch, in step.
  assert resumed and resumed[0] >= 2 and resumed[-1] == epochs, outputs[0][1][-3000:]
  assert _losses(outputs[0][1], epochs) == _losses(outputs[1][1], epochs)
  info = json.load(open(model_dir / "model_info.json"))
  assert info["epochs"] == epochs  # one history row per epoch, across the two runs
  assert not os.path.exists(model_dir / "backup")
  assert os.listdir(tmp_path / "tmpb_1") == []
