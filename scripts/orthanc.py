"""A throwaway Orthanc PACS on loopback, for cxr-node's tests and its benchmark.

Orthanc (Debian's `orthanc` package) runs with a configuration written into a temporary
folder: its own storage, loopback only, no authentication, free ports. Films go in
through its REST API and out to a DICOM node with `/modalities/<name>/store`, exactly as
a clinic's Orthanc routes them; what comes back is read from it again.
"""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Dict, List, Optional

BINARY_NAMES = ("Orthanc", "orthanc")


def binary() -> Optional[str]:
  """Orthanc's executable, or None where it is not installed."""
  for name in BINARY_NAMES:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                   else None)
    if found:
      return found
  return None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Orthanc:
  """One Orthanc process with its own configuration and storage under `folder`."""

  def __init__(self, folder: str, ae_title: str = "ORTHANC", concurrent_jobs: int = 4,
               modalities: Optional[Dict[str, list]] = None,
               lua_scripts: Optional[List[str]] = None):
    """
    Args:
      folder: its configuration, storage and log go here.
      ae_title: its AE title.
      concurrent_jobs: store jobs it runs at once (one association each).
      modalities: DICOM nodes it knows from the start, {name: [AE, host, port]}.
      lua_scripts: Lua files it loads (routing rules).
    """
    self.folder, self.ae_title = folder, ae_title
    self.http_port, self.dicom_port = free_port(), free_port()
    self.url = f"http://127.0.0.1:{self.http_port}"
    os.makedirs(folder, exist_ok=True)
    config = {
        "Name": "cxr-edge test PACS", "StorageDirectory": os.path.join(folder, "storage"),
        "IndexDirectory": os.path.join(folder, "index"), "HttpPort": self.http_port,
        "DicomPort": self.dicom_port, "DicomAet": ae_title, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True, "ConcurrentJobs": concurrent_jobs,
        "SaveJobs": False, "Plugins": [], "StableAge": 1, "DicomScuTimeout": 30,
        "HttpTimeout": 60, "MaximumStorageCacheSize": 0, "LimitFindResults": 0, "LimitFindInstances": 0,
        "DicomModalities": modalities or {}, "LuaScripts": lua_scripts or [],
    }
    self.config_path = os.path.join(folder, "orthanc.json")
    with open(self.config_path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=1)
    self.process: Optional[subprocess.Popen] = None

  def start(self, timeout: float = 60) -> "Orthanc":
    exe = binary()
    if exe is None:
      raise FileNotFoundError("Orthanc is not installed (Debian: apt-get install orthanc)")
    self._log = open(os.path.join(self.folder, "orthanc.log"), "wb")
    self.process = subprocess.Popen([exe, self.config_path], stdout=self._log,
                                    stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"Orthanc exited at start; see {self._log.name}")
      try:
        self.get("/system")
        return self
      except OSError:
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer in {timeout:.0f} s; see {self._log.name}")

  def stop(self) -> None:
    if self.process is not None:
      self.process.terminate()
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
      self._log.close()
      self.process = None

  def __enter__(self) -> "Orthanc":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  # REST ----------------------------------------------------------------------------

  def _request(self, method: str, path: str, body: Optional[bytes] = None,
               content_type: str = "application/json") -> bytes:
    request = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.read()

  def get(self, path: str):
    return json.loads(self._request("GET", path))

  def post(self, path: str, payload) -> Dict:
    return json.loads(self._request("POST", path, json.dumps(payload).encode()))

  def upload(self, data: bytes) -> str:
    """Stores a DICOM file; returns Orthanc's instance id."""
    return json.loads(self._request("POST", "/instances", data,
                                    "application/dicom"))["ID"]

  def add_modality(self, name: str, ae_title: str, port: int,
                   host: str = "127.0.0.1") -> None:
    self._request("PUT", f"/modalities/{name}", json.dumps(
        {"AET": ae_title, "Host": host, "Port": port}).encode())

  def store(self, modality: str, ids: List[str], asynchronous: bool = False) -> Dict:
    """Sends instances to a modality (one association per job); waits unless asked not."""
    return self.post(f"/modalities/{modality}/store",
                     {"Resources": ids, "Synchronous": not asynchronous,
                      "Asynchronous": asynchronous})

  def job_state(self, job_id: str) -> str:
    return self.get(f"/jobs/{job_id}")["State"]

  def instances(self) -> List[str]:
    return self.get("/instances")

  def modality_of(self, instance: str) -> str:
    return self.get(f"/instances/{instance}/simplified-tags").get("Modality", "")

  def modality_counts(self) -> Dict[str, int]:
    """{modality: instances} of everything stored."""
    counts: Dict[str, int] = {}
    for instance in self.instances():
      modality = self.modality_of(instance)
      counts[modality] = counts.get(modality, 0) + 1
    return counts

  def storage_file(self, instance: str) -> str:
    """Where Orthanc keeps an instance's DICOM file (its storage folder's layout)."""
    uuid = self.get(f"/instances/{instance}/attachments/dicom/info")["Uuid"]
    return os.path.join(self.folder, "storage", uuid[:2], uuid[2:4], uuid)

  def file(self, instance: str) -> bytes:
    return self._request("GET", f"/instances/{instance}/file")

  def delete(self, instance: str) -> None:
    self._request("DELETE", f"/instances/{instance}")
