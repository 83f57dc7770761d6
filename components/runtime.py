"""The container images and cluster names the components and the pipeline use, read from infra/ (their one source)."""

from __future__ import annotations

from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _image(kind: str) -> str:
    entry = yaml.safe_load((INFRA / "images.yaml").read_text())[kind]
    return f"{entry['repository']}:{entry['tag']}"


CPU_IMAGE = _image("cpu")
"""Every step's image: the package with its kfp extra and auto_LiRPA, as infra/docker/Dockerfile builds it."""
CUDA_IMAGE = _image("cuda")
"""The verification image when the pipeline runs verification on GPUs (infra/docker/Dockerfile.cuda)."""
