"""Local stand-ins for Google Cloud on 127.0.0.1: Cloud Storage, BigQuery and the metadata server.

- Cloud Storage: ``gcp-storage-emulator`` (a registry package, pure Python), kept on disk so
  that BigQuery load jobs read the very files the job wrote. Every client that honours
  ``STORAGE_EMULATOR_HOST`` reaches it: google-cloud-storage and so Beam's GCS file system.
  (``fake-gcs-server`` answers google-cloud-storage's batch requests with an empty multipart
  body, because the client's parts carry no ``Content-ID``, so Beam's ``FileSystems.rename``
  and ``delete`` fail there with ``ValueError: Bad response: not multi-part``.)
- BigQuery: ``bqemulator`` (REST on DuckDB), through ``tests/cloud/bq_server.py``; it reads
  ``gs://BUCKET/path`` load URIs from the Cloud Storage emulator's folder
  (``BQEMU_GCS_LOCAL_ROOT``), and google-cloud-bigquery finds it in ``BIGQUERY_EMULATOR_HOST``.
- Credentials: a Compute Engine metadata server that hands out a token, found by google-auth
  through ``GCE_METADATA_HOST``/``GCE_METADATA_IP``: the Application Default Credentials a
  Dataflow worker or a GCE VM has, so the product takes its real credential path.

Commands run as subprocesses with :meth:`CloudEmulators.env`, which also sends any https request
that would leave the machine to a closed port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

from tests.conftest import REPO_ROOT

PROJECT = "emu-project"
BUCKET = "poster-recs-emu"
PACKAGES = {"gcp_storage_emulator": "gcp-storage-emulator", "bqemulator": "bqemulator"}
CLOSED_PORT = 9  # nothing listens on the discard port: a connection there is refused at once
_STARTUP_S = 60.0


def missing_packages() -> list[str]:
    """The emulator packages (the ``emulators`` extra) that are not installed."""
    return [name for module, name in PACKAGES.items() if importlib.util.find_spec(module) is None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _MetadataHandler(BaseHTTPRequestHandler):
    """The few Compute Engine metadata paths google-auth reads for a token."""

    answers = {
        "/": "",
        "/computeMetadata/v1/project/project-id": PROJECT,
        "/computeMetadata/v1/universe/universe-domain": "googleapis.com",
        # Not an e-mail address: google-auth then skips its regional access boundary lookup,
        # which would call iamcredentials.googleapis.com.
        "/computeMetadata/v1/instance/service-accounts/default/": json.dumps(
            {"email": "emulated-worker", "aliases": ["default"],
             "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
        ),
        "/computeMetadata/v1/instance/service-accounts/default/token": json.dumps(
            {"access_token": "emulated-token", "expires_in": 3600, "token_type": "Bearer"}
        ),
    }  # fmt: skip
    tokens_served = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        accounts = "/computeMetadata/v1/instance/service-accounts/"
        if path.startswith(accounts):  # google-auth asks by name once it knows the e-mail
            account, _, rest = path[len(accounts) :].partition("/")
            path = f"{accounts}default/{rest}" if account else path
        body = self.answers.get(path)
        if path.endswith("/token") and body is not None:
            type(self).tokens_served += 1
        data = (body or "").encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if data[:1] == b"{" else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        """Quiet."""


@contextlib.contextmanager
def metadata_server() -> Iterator[tuple[str, type[_MetadataHandler]]]:
    """A metadata server on 127.0.0.1: ("host:port", its handler class with the token count)."""
    handler = type("MetadataHandler", (_MetadataHandler,), {"tokens_served": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _wait_until_up(url: str, process: subprocess.Popen, log: pathlib.Path) -> None:
    """Poll ``url`` until it answers; RuntimeError with the log's tail if the server died."""
    deadline = time.monotonic() + _STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {_STARTUP_S:.0f}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _server(argv: list[str], ready_url: str, log: pathlib.Path, env: dict) -> Iterator[None]:
    """Run a server process until the block ends (then terminate it, and kill it if it hangs)."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO_ROOT)  # fmt: skip
    try:
        _wait_until_up(ready_url, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass(frozen=True)
class CloudEmulators:
    """Running emulators and how to reach them."""

    gcs_url: str
    bq_url: str
    metadata_host: str
    metadata: type[_MetadataHandler]
    workdir: pathlib.Path

    def env(self, credentials: bool = True, **extra: str) -> dict[str, str]:
        """The environment of a command that should use the emulators, with Application Default
        Credentials from the metadata server (or, with ``credentials=False``, none at all)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "NO_GCE_CHECK")}  # fmt: skip
        gcloud = self.workdir / "gcloud-config"  # no gcloud login of the machine's user
        gcloud.mkdir(exist_ok=True)
        metadata = self.metadata_host if credentials else f"127.0.0.1:{CLOSED_PORT}"
        env.update(
            STORAGE_EMULATOR_HOST=self.gcs_url,
            BIGQUERY_EMULATOR_HOST=self.bq_url,
            GCE_METADATA_HOST=metadata,
            GCE_METADATA_IP=metadata,
            GOOGLE_CLOUD_PROJECT=PROJECT,
            CLOUDSDK_CONFIG=str(gcloud),
            HTTPS_PROXY=f"http://127.0.0.1:{CLOSED_PORT}",
            https_proxy=f"http://127.0.0.1:{CLOSED_PORT}",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    def storage_client(self):
        """A google-cloud-storage client of the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.gcs_url})  # fmt: skip

    def bigquery_client(self):
        """A google-cloud-bigquery client of the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": self.bq_url})  # fmt: skip

    def run(self, module: str, args: list[str], timeout: float,
            **env_options) -> subprocess.CompletedProcess:  # fmt: skip
        """``python -m module args`` as a user would run it, against the emulators."""
        return subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True,
            timeout=timeout, cwd=REPO_ROOT, env=self.env(**env_options),
        )  # fmt: skip


@contextlib.contextmanager
def start_emulators(workdir: pathlib.Path) -> Iterator[CloudEmulators]:
    """Cloud Storage (with ``BUCKET``), BigQuery and the metadata server, stopped after."""
    data = workdir / "gcs-data"
    home = workdir / "bq-home"  # the BigQuery emulator's DuckDB writes nothing under ~ of the user
    home.mkdir(parents=True, exist_ok=True)
    gcs_port, bq_port, grpc_port = free_port(), free_port(), free_port()
    gcs_url, bq_url = f"http://127.0.0.1:{gcs_port}", f"http://127.0.0.1:{bq_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BQEMU_", "GCE_"))}
    gcs_argv = [sys.executable, "-m", "gcp_storage_emulator", "-d", str(data), "start",
                "--host=127.0.0.1", f"--port={gcs_port}", f"--default-bucket={BUCKET}", "-q"]
    bq_argv = [sys.executable, "-m", "tests.cloud.bq_server", "start", "--rest-host=127.0.0.1",
               f"--rest-port={bq_port}", "--grpc-host=127.0.0.1", f"--grpc-port={grpc_port}",
               f"--project={PROJECT}", "--log-level=warning", "--log-format=console"]
    bq_env = dict(base, HOME=str(home), BQEMU_GCS_LOCAL_ROOT=str(data / ".cloudstorage"),
                  BQEMU_ENABLE_FORMAT_EXTENSIONS="false")  # fmt: skip
    with (
        metadata_server() as (metadata_host, handler),
        _server(gcs_argv, f"{gcs_url}/storage/v1/b", workdir / "gcs.log", base),
        _server(bq_argv, f"{bq_url}/bigquery/v2/projects/{PROJECT}/datasets",
                workdir / "bq.log", bq_env),
    ):  # fmt: skip
        yield CloudEmulators(gcs_url, bq_url, metadata_host, handler, workdir)
