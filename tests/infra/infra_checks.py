"""Readers for the infra checks: Dockerfiles, pip install lines, kustomizations, and the environment names auditai_ops reads.

No Docker engine, kustomize binary or cluster exists here, so these parse the files the way
those tools would, for the subset of features the repository uses, and refuse anything else
(an unsupported kustomization field fails the test instead of being ignored).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "compose" / "docker-compose.yml"
K8S = INFRA / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "gpu-check", K8S / "overlays" / "profile"]


# --- Dockerfiles -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with backslash continuations joined and comment lines dropped (as BuildKit's parser does)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"{path}: line {start}: continuation never ends")
    return instructions


def dockerfile_stages(path: Path) -> list[Stage]:
    """Build stages in order; ARG before the first FROM is not used here and is refused."""
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            if parts[0].startswith("--"):
                raise ValueError(f"{path}:{instruction.line}: FROM flags are not used in this repository")
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            if len(parts) not in (1, 3) or (len(parts) == 3 and name is None):
                raise ValueError(f"{path}:{instruction.line}: cannot read FROM {instruction.arguments}")
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            raise ValueError(f"{path}:{instruction.line}: {instruction.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT or CMD (shell form is refused: signals would not reach the process)."""
    value = json.loads(instruction.arguments)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"line {instruction.line}: expected a JSON array of strings")
    return value


def labels(stage: Stage) -> dict[str, str]:
    """LABEL key="value" pairs of one stage."""
    result: dict[str, str] = {}
    for instruction in stage.all("LABEL"):
        for token in shlex.split(instruction.arguments):
            key, separator, value = token.partition("=")
            if not separator:
                raise ValueError(f"line {instruction.line}: LABEL needs key=value, got {token!r}")
            result[key] = value
    return result


# --- pip install lines -------------------------------------------------------------------

# Flags that change how pip talks, not what it installs.
COSMETIC_PIP_FLAGS = {"--quiet", "-q", "--disable-pip-version-check", "--no-cache-dir"}
PIP_FLAGS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "--constraint", "-c", "--requirement", "-r"}


@dataclass(frozen=True)
class PipInstall:
    """One `pip install`: its meaningful options, requirements, and the project's extras when it installs '.'."""

    options: tuple[str, ...]
    requirements: tuple[str, ...]
    editable: bool

    @property
    def project_extras(self) -> frozenset[str] | None:
        for requirement in self.requirements:
            match = re.fullmatch(r"\.(?:\[([^\]]*)\])?", requirement)
            if match:
                return frozenset(extra.strip() for extra in (match.group(1) or "").split(",") if extra.strip())
        return None


def pip_installs(shell: str) -> list[PipInstall]:
    """Every `pip install` in a shell command line (`a && b; c`), as run by `python -m pip`, `$(PY) -m pip` or `pip`."""
    installs = []
    for command in re.split(r"&&|;|\|\|", shell):
        tokens = shlex.split(command)
        for index in range(len(tokens) - 1):
            if tokens[index] in ("pip", "pip3") and tokens[index + 1] == "install":
                installs.append(_parse_pip_install(tokens[index + 2 :]))
                break
    return installs


def _parse_pip_install(arguments: list[str]) -> PipInstall:
    options: list[str] = []
    requirements: list[str] = []
    editable = False
    iterator = iter(arguments)
    for token in iterator:
        if token in COSMETIC_PIP_FLAGS:
            continue
        if token in ("-e", "--editable"):
            editable = True
        elif token in PIP_FLAGS_WITH_VALUE:
            options.append(f"{token}={next(iterator)}")
        elif token.startswith("-"):
            options.append(token)
        else:
            requirements.append(token)
    return PipInstall(options=tuple(options), requirements=tuple(requirements), editable=editable)


def makefile_pip_installs(path: Path) -> list[PipInstall]:
    """The pip installs of the Makefile's recipes, in order, with make's $(PY) as python."""
    installs = []
    for line in path.read_text().splitlines():
        if line.startswith("\t") and "pip install" in line:
            installs.extend(pip_installs(line.strip().replace("$(PY)", "python")))
    return installs


def dockerfile_pip_installs(stage: Stage) -> list[PipInstall]:
    installs = []
    for instruction in stage.all("RUN"):
        installs.extend(pip_installs(instruction.arguments))
    return installs


# --- kustomize ---------------------------------------------------------------------------

SUPPORTED_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "configMapGenerator", "generatorOptions"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def generated_config_map_files(directory: Path) -> dict[str, dict[str, Path]]:
    """configMapGenerator of a kustomization: ConfigMap name -> {key: file}. Only `name` and `files`
    (`path` or `key=path`, inside the kustomization's folder, as kustomize's load restrictor requires)
    are rendered, and only with generatorOptions.disableNameSuffixHash: true (no hash suffix to compute)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    generators = kustomization.get("configMapGenerator", [])
    if generators and kustomization.get("generatorOptions") != {"disableNameSuffixHash": True}:
        raise ValueError(f"{directory}/kustomization.yaml: only generatorOptions {{disableNameSuffixHash: true}} is rendered by tests/infra")
    generated: dict[str, dict[str, Path]] = {}
    for generator in generators:
        if set(generator) != {"name", "files"}:
            raise ValueError(f"{directory}/kustomization.yaml: configMapGenerator entries other than name + files are not rendered by tests/infra")
        files: dict[str, Path] = {}
        for entry in generator["files"]:
            key, _, relative = entry.rpartition("=")
            path = (directory / relative).resolve()
            if not path.is_relative_to(directory.resolve()) or not path.is_file():
                raise FileNotFoundError(f"{directory}/kustomization.yaml: configMapGenerator file {relative} is not a file inside the kustomization")
            files[key or path.name] = path
        generated[generator["name"]] = files
    return generated


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What `kustomize build DIRECTORY` gives for the fields this repository uses: resources (files and
    kustomization folders), ConfigMaps generated from files, namespace, labels (metadata only, like
    includeSelectors: false) and images."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_FIELDS
    if unsupported:
        raise ValueError(f"{directory}/kustomization.yaml: fields {sorted(unsupported)} are not rendered by tests/infra; extend render_kustomization")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render_kustomization(path))
        elif path.is_file():
            resources.extend(load_documents(path))
        else:
            raise FileNotFoundError(f"{directory}/kustomization.yaml: resource {entry} does not exist")
    for name, files in generated_config_map_files(directory).items():
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {key: path.read_text() for key, path in files.items()}})
    for resource in resources:
        metadata = resource.setdefault("metadata", {})
        if "namespace" in kustomization and resource["kind"] not in CLUSTER_SCOPED_KINDS:
            metadata["namespace"] = kustomization["namespace"]
        for label_set in kustomization.get("labels", []):
            if set(label_set) - {"pairs"}:
                raise ValueError(f"{directory}/kustomization.yaml: labels entries other than plain pairs are not rendered by tests/infra")
            metadata.setdefault("labels", {}).update(label_set["pairs"])
        for container in containers(resource):
            for override in kustomization.get("images", []):
                if container["image"] == override["name"]:
                    container["image"] = f"{override['newName']}:{override['newTag']}"
    return resources


CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass", "CustomResourceDefinition"}


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template spec of a workload (Deployment, StatefulSet, Job), or None."""
    if resource["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return resource["spec"]["template"]["spec"]
    if resource["kind"] == "Pod":
        return resource["spec"]
    return None


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


# --- environment names read by auditai_ops -----------------------------------------------

ENVIRON_METHODS = {"get", "setdefault", "pop"}


@dataclass(frozen=True)
class EnvRead:
    name: str
    location: str


def env_names_read(package: Path) -> list[EnvRead]:
    """Every environment variable name the package's source reads or sets: os.environ[...], os.environ.get/
    setdefault/pop(...), os.getenv(...), `... in os.environ`. A name given as a module-level string
    constant (here or imported from another module of the package) is resolved; anything else
    (an f-string, a computed name) raises ValueError with its location, so the scan never misses one."""
    modules = {path: ast.parse(path.read_text(), filename=str(path)) for path in sorted(package.rglob("*.py"))}
    constants: dict[str, set[str]] = {}
    for tree in modules.values():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for target in targets:
                    if isinstance(target, ast.Name):
                        constants.setdefault(target.id, set()).add(value.value)
    reads: list[EnvRead] = []
    for path, tree in modules.items():
        for node in ast.walk(tree):
            key = _environment_key(node)
            if key is None:
                continue
            location = f"{path.relative_to(package.parent)}:{node.lineno}"
            reads.append(EnvRead(_resolve_name(key, constants, location), location))
    return reads


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "environ")


def _environment_key(node: ast.AST) -> ast.expr | None:
    if isinstance(node, ast.Call):
        function = node.func
        is_getenv = (isinstance(function, ast.Attribute) and function.attr == "getenv") or (isinstance(function, ast.Name) and function.id == "getenv")
        is_environ_method = isinstance(function, ast.Attribute) and function.attr in ENVIRON_METHODS and _is_environ(function.value)
        if (is_getenv or is_environ_method) and node.args:
            return node.args[0]
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        return node.slice
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In | ast.NotIn) and _is_environ(node.comparators[0]):
        return node.left
    return None


def _resolve_name(key: ast.expr, constants: dict[str, set[str]], location: str) -> str:
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value
    symbol = key.id if isinstance(key, ast.Name) else key.attr if isinstance(key, ast.Attribute) else None
    values = constants.get(symbol or "", set())
    if len(values) == 1:
        return next(iter(values))
    raise ValueError(f"{location}: cannot resolve the environment variable name {ast.unparse(key)!r} to one string constant")
