"""The container images and cluster names the components and the pipeline use, from infra/ (their one source)."""

from infra.images import image
from infra.runtime import runtime

CPU_IMAGE = image("cpu")
"""Every step's image: the package with its kfp extra and auto_LiRPA, as infra/docker/Dockerfile builds it."""
CUDA_IMAGE = image("cuda")
"""The verification image when the pipeline runs verification on GPUs (infra/docker/Dockerfile.cuda)."""
RUNTIME = runtime()
"""ConfigMap, Secrets, service account and GPU node placement of infra/runtime.yaml."""
