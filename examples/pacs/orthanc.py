"""A private Orthanc with its DICOMweb plugin for the example: start DIR NAME USER, stop DIR.

`start` writes DIR/orthanc.json (free loopback port, storage in DIR/db, HTTP basic with USER and a
random password in DIR/password, mode 0600), starts Orthanc in the background, waits for /system
and writes the DICOMweb URL to DIR/url. `stop` ends the Orthanc whose pid is in DIR/pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(folder: Path, name: str, user: str) -> None:
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugin = next((p for p in PLUGINS if os.path.exists(p)), None)
    if not os.path.exists(binary) or plugin is None:
        sys.exit("Orthanc with its DICOMweb plugin is not installed: apt-get install orthanc orthanc-dicomweb")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    secret = folder / "password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    port = free_port()
    config = {"Name": name, "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"), "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {user: password}, "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "pid").write_text(f"{proc.pid}\n")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/system", headers={"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()})
    for _ in range(400):
        try:
            urllib.request.urlopen(request, timeout=2).read()
            (folder / "url").write_text(f"http://127.0.0.1:{port}/dicom-web\n")
            print(f"{name}: http://127.0.0.1:{port}/dicom-web (user {user}, password in {secret})", file=sys.stderr)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"Orthanc {name} did not start; see {folder / 'orthanc.log'}")


def stop(folder: Path) -> None:
    pid_file = folder / "pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):  # Orthanc takes about 2 s to stop
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    (folder / "url").unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "start":
        start(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(Path(sys.argv[2]))
    else:
        sys.exit("usage: orthanc.py start DIR NAME USER | stop DIR")
