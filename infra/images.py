"""Container image references from infra/images.yaml, the single source of image names and tags.

    from infra.images import image
    image("cpu")   # 'ghcr.io/auditai-ops/auditai:0.1.0'

`python infra/images.py KIND` prints one reference (for `docker build -t`), `python
infra/images.py` prints every kind and reference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

IMAGES_FILE = Path(__file__).with_name("images.yaml")


@dataclass(frozen=True)
class Image:
    """One image: its repository, its tag and, for images built here, the Dockerfile (relative to the repository root)."""

    kind: str
    repository: str
    tag: str
    dockerfile: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@cache
def images() -> dict[str, Image]:
    """Every image of images.yaml by kind; a malformed entry raises ValueError naming it."""
    raw = yaml.safe_load(IMAGES_FILE.read_text())
    entries = raw.get("images") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{IMAGES_FILE}: expected a mapping 'images: {{kind: {{repository, tag}}}}'")
    result = {}
    for kind, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) - {"repository", "tag", "dockerfile"} or not {"repository", "tag"} <= set(entry):
            raise ValueError(f"{IMAGES_FILE}: images.{kind}: expected keys repository, tag and optionally dockerfile")
        if not all(isinstance(value, str) and value for value in entry.values()):
            raise ValueError(f"{IMAGES_FILE}: images.{kind}: repository, tag and dockerfile must be non-empty strings (quote numeric tags)")
        result[kind] = Image(kind=kind, **entry)
    return result


def image(kind: str) -> str:
    """The full reference 'repository:tag' of one kind of image (cpu, cuda, airflow, mlflow, ...)."""
    known = images()
    if kind not in known:
        raise KeyError(f"unknown image kind {kind!r}; {IMAGES_FILE.name} has: {', '.join(known)}")
    return known[kind].reference


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python infra/images.py [KIND]", file=sys.stderr)
        return 2
    if argv:
        try:
            print(image(argv[0]))
        except KeyError as error:
            print(f"images.py: error: {error.args[0]}", file=sys.stderr)
            return 2
        return 0
    for kind, entry in images().items():
        print(f"{kind}\t{entry.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
