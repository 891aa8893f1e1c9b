"""A real S3 API server on loopback for tests: moto's server mode, not a mock of satpipe.

The session fixture `s3_server` starts one `moto.server.ThreadedMotoServer` on 127.0.0.1 at a
free port, creates a bucket, and yields an `S3Server`: its `endpoint_url`, the s3fs
`storage_options` that reach it, `env` (the usual AWS variables, for subprocesses), `url(name)`
for a fresh, unique `s3://` URL per test, and `stop()`/`start()` to take the server down and
bring it back on the same port (moto keeps its objects in-process, so a restart loses nothing,
like an S3 outage that ends).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

BUCKET = "satpipe-test"
# moto accepts any credentials; real ones must never reach it (nor be needed).
KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clear_fsspec_caches() -> None:
    """Forget cached S3FileSystem instances (and their listings and connections)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


class S3Server:
    """One moto S3 server on 127.0.0.1; `stop()` and `start()` reuse the same port."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options: flat strings, so `--storage-option key=value` can say the same."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": self.endpoint_url}

    @property
    def fail_fast_options(self) -> dict[str, Any]:
        """`storage_options` with botocore's retries off: an outage fails in about a second."""
        return dict(self.storage_options, config_kwargs={"retries": {"max_attempts": 1}})

    @property
    def cli_options(self) -> list[str]:
        """The same options as repeated `--storage-option key=value` arguments."""
        args: list[str] = []
        for key, value in self.storage_options.items():
            args += ["--storage-option", f"{key}={value}"]
        return args

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus the AWS variables botocore reads (endpoint included)."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=self.endpoint_url,
            NO_PROXY="127.0.0.1,localhost",
            # Few retries, so a test of an outage fails in seconds rather than a minute.
            AWS_MAX_ATTEMPTS="2",
        )
        return env

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        # One log line per request would drown pytest's output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        # Pooled keep-alive connections point at the dead server; drop them with the instances.
        clear_fsspec_caches()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """`with server.stopped(): ...` runs the block while S3 is unreachable."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def create_bucket(self) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            client.create_bucket(Bucket=self.bucket)

    def url(self, name: str = "store.zarr") -> str:
        """A fresh `s3://` URL that no other test uses."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}/{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running moto S3 server with one bucket; restarted for you if a test left it down."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = S3Server()
    server.start()
    server.create_bucket()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """Per-test handle on the session server: running at start, running again at the end."""
    s3_server.start()
    clear_fsspec_caches()
    yield s3_server
    s3_server.start()
    clear_fsspec_caches()
