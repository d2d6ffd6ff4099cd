"""The KubeRay manifests in cluster/: what a Kubernetes API server would accept, and whether
the cluster they describe can run the jobs they name.

No Kubernetes runs here, so each manifest is validated with jsonschema against the schema the
API server enforces: the served version of KubeRay's CRD in ../shared/schemas/kuberay that the
manifest's apiVersion and kind name. The server's strict field validation is mimicked: an
object schema with ``properties`` rejects fields it does not list (unless it has
``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``), so a misspelt field
fails; ``x-kubernetes-int-or-string`` takes an integer or a string, ``nullable`` takes null,
``format: int32/int64`` is range-checked, and ``x-kubernetes-list-type`` map and set lists
reject duplicates. CEL rules (``x-kubernetes-validations``) are not evaluated: a test checks
that no field the manifests set carries one. ``metadata`` is checked by hand, with the name
rules KubeRay's operator adds, as are its worker-group replica bounds.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import os
import re
import shlex

import jsonschema
import pytest
import yaml

from dsw_ray import load_job
from dsw_ray.resources import pool_cpus
from tests.conftest import ROOT

SCHEMAS = os.path.join(ROOT, "..", "shared", "schemas", "kuberay")
# The KubeRay manifests; cluster/networkpolicy.yaml is a core Kubernetes object, checked apart.
MANIFESTS = sorted(p for p in glob.glob(os.path.join(ROOT, "cluster", "*.yaml")) if not p.endswith("networkpolicy.yaml"))
NETWORK_POLICY = os.path.join(ROOT, "cluster", "networkpolicy.yaml")
DOCKERFILE = os.path.join(ROOT, "cluster", "Dockerfile")
JOBS = sorted(glob.glob(os.path.join(ROOT, "jobs", "*.yaml")))
# Cluster jobs keep their data here on the shared volume; the tests read ../shared/data instead.
DATA_ON_VOLUME = "/mnt/dsw/data"
# KubeRay's MaxRayClusterNameLength and MaxRayJobNameLength (ray-operator/controllers/ray/utils/constant.go).
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
QUANTITY_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
QUANTITY_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
# The CRD files are 1-2 MB of YAML: libyaml reads them in a fraction of the pure-Python time.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str):
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def name(path: str) -> str:
    return os.path.basename(path)


KINDS = {path: read_yaml(path).get("kind") for path in MANIFESTS}
RAYJOBS = [path for path, kind in KINDS.items() if kind == "RayJob"]


# --- the API server's view: strict structural schemas --------------------------------------

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def strict(schema: dict) -> dict:
    """A CRD's structural schema as JSON Schema, with the API server's strictness added."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {field: strict(sub) for field, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if "items" in node:
        node["items"] = strict(node["items"])
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in node:
            node[combinator] = [strict(sub) for sub in node[combinator]]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        node["uniqueItems"] = True
    return node


@pytest.fixture(scope="module")
def crds() -> dict:
    """(apiVersion, kind) -> strict schema, for every served version of every CRD in SCHEMAS."""
    paths = sorted(glob.glob(os.path.join(SCHEMAS, "*.yaml")))
    if not paths:
        pytest.skip(f"the KubeRay CRD schemas are not at {SCHEMAS}")
    schemas = {}
    for path in paths:
        crd = read_yaml(path)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def schema_nodes(value, schema: dict, path: str = "$"):
    """Every (path, value, schema) pair of an instance that validated against ``schema``."""
    yield path, value, schema
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from schema_nodes(item, sub, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from schema_nodes(item, schema["items"], f"{path}[{index}]")


def metadata_errors(manifest: dict) -> list[str]:
    """What the API server (ObjectMeta) and KubeRay's operator check of ``metadata``."""
    metadata, kind = manifest.get("metadata") or {}, manifest.get("kind")
    errors = []
    object_name = metadata.get("name", "")
    if not DNS1035_LABEL.fullmatch(object_name):
        errors.append(f"metadata.name {object_name!r} is not a DNS-1035 label (KubeRay names services after it)")
    if len(object_name) > NAME_LIMITS.get(kind, 63):
        errors.append(f"metadata.name {object_name!r} is longer than KubeRay's {NAME_LIMITS.get(kind, 63)} characters")
    for key, value in (metadata.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            errors.append(f"metadata.labels.{key}: {value!r} is not a label value")
    unknown = set(metadata) - {"name", "namespace", "labels", "annotations"}
    if unknown:
        errors.append(f"metadata: fields this test does not check: {sorted(unknown)}")
    return errors


def operator_errors(manifest: dict) -> list[str]:
    """A few of the checks KubeRay's operator makes before it creates pods (utils/validation.go)."""
    spec = cluster_spec(manifest)
    errors = []
    names = [group.get("groupName") for group in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        errors.append(f"worker group names repeat: {names}")
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    for group in spec.get("workerGroupSpecs", []):
        label = group.get("groupName")
        if not DNS1123_LABEL.fullmatch(label or ""):
            errors.append(f"worker group name {label!r} is not a DNS-1123 label")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"worker group {label}: minReplicas and maxReplicas are required without autoscaling")
        elif low is not None and high is not None and not 0 <= low <= group.get("replicas", low) <= high:
            errors.append(f"worker group {label}: needs 0 <= minReplicas <= replicas <= maxReplicas")
    if manifest.get("kind") == "RayJob":
        if manifest["spec"].get("ttlSecondsAfterFinished", 0) < 0:
            errors.append("spec.ttlSecondsAfterFinished is negative")
        if manifest["spec"].get("activeDeadlineSeconds", 1) <= 0:
            errors.append("spec.activeDeadlineSeconds must be positive")
    return errors


def validation_errors(manifest: dict, crds: dict) -> list[str]:
    """Why the API server (or KubeRay's operator) would reject ``manifest``; empty if it would not."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key not in crds:
        return [f"no served CRD version for apiVersion {key[0]!r}, kind {key[1]!r}"]
    schema = crds[key]
    validator = jsonschema.Draft7Validator(schema, format_checker=FORMATS)
    errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(manifest)]
    if errors:
        return errors
    for path, value, node in schema_nodes(manifest, schema):
        if node.get("x-kubernetes-list-type") == "map":
            keys = [tuple(item.get(k) for k in node["x-kubernetes-list-map-keys"]) for item in value]
            errors += [f"{path}: duplicate entry {k}" for k in sorted(set(keys), key=str) if keys.count(k) > 1]
    return errors + metadata_errors(manifest) + operator_errors(manifest)


# --- the cluster a manifest describes ------------------------------------------------------


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def ray_groups(manifest: dict) -> list[tuple[str, int, dict, dict]]:
    """(group, replicas, rayStartParams, pod spec) of the head and each worker group. A RayJob's
    cluster has ``replicas`` workers; an interactive RayCluster is counted at ``maxReplicas``,
    how far docs/cluster.md says to scale it by hand."""
    spec = cluster_spec(manifest)
    count = "replicas" if manifest["kind"] == "RayJob" else "maxReplicas"
    head = spec["headGroupSpec"]
    groups = [("head", 1, head.get("rayStartParams", {}), head["template"]["spec"])]
    for group in spec.get("workerGroupSpecs", []):
        params = group.get("rayStartParams", {})
        groups.append((group["groupName"], group.get(count, 0), params, group["template"]["spec"]))
    return groups


def pod_specs(manifest: dict) -> dict[str, dict]:
    """Every pod spec the manifest makes Kubernetes run, by role."""
    pods = {group: pod for group, _, _, pod in ray_groups(manifest)}
    submitter = manifest["spec"].get("submitterPodTemplate") if manifest["kind"] == "RayJob" else None
    if submitter:
        pods["submitter"] = submitter["spec"]
    return pods


def quantity(value) -> float:
    """A Kubernetes quantity (``64``, ``"500m"``, ``"512Gi"``) as a number."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * QUANTITY_UNITS[unit]


def ray_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay's RayContainerIndex


def ray_capacity(manifest: dict) -> tuple[float, float, float]:
    """(CPUs, GPUs, GPUs of the largest pod) that Ray sees: rayStartParams num-cpus/num-gpus
    where set, else the Ray container's limits, as KubeRay passes them to `ray start`."""
    cpus = gpus = largest = 0.0
    for _, replicas, params, pod in ray_groups(manifest):
        limits = ray_container(pod).get("resources", {}).get("limits", {})
        pod_cpus = quantity(params.get("num-cpus", limits.get("cpu", 0)))
        pod_gpus = quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        cpus, gpus, largest = cpus + replicas * pod_cpus, gpus + replicas * pod_gpus, max(largest, pod_gpus)
    return cpus, gpus, largest


def volume_mounts(pod: dict) -> list[tuple[str, dict, bool]]:
    """(mount path, volume, read only) of the Ray container's mounts."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = ray_container(pod).get("volumeMounts", [])
    return [(m["mountPath"], volumes.get(m["name"], {}), m.get("readOnly", False)) for m in mounts]


# --- the image and the jobs ----------------------------------------------------------------


def dockerfile() -> str:
    with open(DOCKERFILE) as f:
        return f.read()


def image_tag() -> str:
    """The tag of the build command that opens cluster/Dockerfile."""
    return re.search(r"^# docker build .*-t (\S+) \.$", dockerfile(), re.M).group(1)


def image_path(path: str) -> str | None:
    """The repository file that cluster/Dockerfile copies to ``path`` in the image, if any."""
    for line in dockerfile().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(word.startswith("--") for word in words):
            continue
        *sources, target = words[1:]
        for source in sources:
            dest = os.path.join(target, os.path.basename(source)) if target.endswith("/") else target
            if path == dest or path.startswith(dest + "/"):
                return os.path.join(ROOT, source, os.path.relpath(path, dest))
    return None


def entrypoint_command(entrypoint: str) -> tuple[str, str, str, list[str]]:
    """(directory, module, job or suite file, overrides) of ``cd DIR && python -m MODULE run JOB
    [k=v ...]`` or ``... table SUITE [k=v ...]``."""
    directory = "/"
    for command in entrypoint.split("&&"):
        words = shlex.split(command)
        if words[0] == "cd":
            directory = words[1]
        elif words[:2] == ["python", "-m"] and words[3:4] in (["run"], ["table"]):
            return directory, words[2], words[4], words[5:]
    raise AssertionError(f"the entrypoint {entrypoint!r} does not run `python -m MODULE run JOB` (or `table SUITE`)")


def local_overrides(job_path: str, shared_data: str) -> list[str]:
    """The job reads its dataset from the volume, which is not here: read ../shared/data instead."""
    data_path = (read_yaml(job_path).get("task") or {}).get("data_path") or ""
    # The reward model is on the volume too; any folder stands in for it (only its existence is checked).
    if not data_path.startswith(DATA_ON_VOLUME + "/"):
        return [f"reward.model_path={ROOT}"]
    return [f"task.data_path={os.path.join(shared_data, os.path.relpath(data_path, DATA_ON_VOLUME))}", f"reward.model_path={ROOT}"]


def jobs_of(path: str) -> list[tuple[str, list[str]]]:
    """(local job file, entrypoint overrides) a manifest runs: a RayJob its entrypoint's job, the
    interactive RayCluster every cluster job in jobs/ (those whose run_dir is absolute)."""
    manifest = read_yaml(path)
    if manifest["kind"] == "RayJob":
        directory, _, job, overrides = entrypoint_command(manifest["spec"]["entrypoint"])
        local = image_path(os.path.join(directory, job))
        assert local, f"cluster/Dockerfile copies no {job} into {directory}"
        suite = read_yaml(local)
        if "jobs" not in suite:
            return [(local, overrides)]
        # A suite (dsw_ray table): each of its jobs, with the suite's methods and overrides.
        methods = "methods=[" + ", ".join(suite["methods"]) + "]"
        runs = []
        for job_file in suite["jobs"].values():
            local_job = image_path(os.path.join(directory, job_file))
            assert local_job, f"cluster/Dockerfile copies no {job_file} into {directory}"
            runs.append((local_job, [*suite.get("overrides", []), *overrides, methods]))
        return runs
    return [(job, []) for job in JOBS if os.path.isabs(read_yaml(job).get("run_dir", ""))]


def absolute_paths(value):
    """Every absolute path in a job file (strings starting with '/')."""
    if isinstance(value, dict):
        for item in value.values():
            yield from absolute_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from absolute_paths(item)
    elif isinstance(value, str) and value.startswith("/"):
        yield value


def gpu_demand(job) -> dict[str, tuple[float, float]]:
    """(GPUs at once, GPUs of one actor or worker) that each stage asks Ray for."""

    def pool(section) -> tuple[float, float]:
        ranks = section.vllm.tensor_parallel_size if getattr(section, "backend", None) == "vllm" else 1
        return section.actors * section.gpus_per_actor * ranks, section.gpus_per_actor * ranks

    demand = {"generate": pool(job.generate), "score": pool(job.score), "evaluate": pool(job.evaluate)}
    if "rm" in job.methods:
        demand["reward"] = pool(job.reward)
    if "self" in job.methods:
        demand["rate"] = pool(job.rate)
    demand["train"] = (job.train.num_workers, 1) if job.train.use_gpu else (0, 0)
    return demand


# --- the tests -----------------------------------------------------------------------------


def test_there_are_manifests():
    assert MANIFESTS and RAYJOBS, "cluster/ should hold the RayJob and RayCluster manifests"


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_manifest_validates(path, crds):
    assert validation_errors(read_yaml(path), crds) == []


def misspell_field(manifest):
    container = ray_container(cluster_spec(manifest)["headGroupSpec"]["template"]["spec"])
    container["resource"] = container.pop("resources")


def wrong_type(manifest):
    cluster_spec(manifest)["workerGroupSpecs"][0]["replicas"] = "one"


def missing_required(manifest):
    del cluster_spec(manifest)["workerGroupSpecs"][0]["groupName"]


def bad_quantity(manifest):
    container = ray_container(cluster_spec(manifest)["workerGroupSpecs"][0]["template"]["spec"])
    container["resources"]["limits"]["memory"] = "512GB"


def out_of_int32(manifest):
    cluster_spec(manifest)["workerGroupSpecs"][0]["maxReplicas"] = 2**31


def duplicate_mount(manifest):
    mounts = ray_container(cluster_spec(manifest)["headGroupSpec"]["template"]["spec"])["volumeMounts"]
    mounts.append(dict(mounts[0]))


def unknown_version(manifest):
    manifest["apiVersion"] = "ray.io/v2"


def long_name(manifest):
    manifest["metadata"]["name"] = "dsw-" + "x" * 60


BREAKAGES = {
    "misspelt field": (misspell_field, "'resource' was unexpected"),
    "wrong type": (wrong_type, "is not of type 'integer'"),
    "missing required field": (missing_required, "'groupName' is a required property"),
    "bad quantity": (bad_quantity, "'512GB' does not match"),
    "int32 overflow": (out_of_int32, "is not a 'int32'"),
    "duplicate list-map key": (duplicate_mount, "duplicate entry"),
    "unknown apiVersion": (unknown_version, "no served CRD version"),
    "name too long": (long_name, "longer than KubeRay's"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_a_broken_copy_fails(path, breakage, crds):
    manifest = copy.deepcopy(read_yaml(path))
    breaker, message = BREAKAGES[breakage]
    breaker(manifest)
    errors = validation_errors(manifest, crds)
    assert any(message in error for error in errors), errors


def test_int_or_string_takes_both(crds):
    manifest = copy.deepcopy(read_yaml(RAYJOBS[0]))
    limits = ray_container(cluster_spec(manifest)["workerGroupSpecs"][0]["template"]["spec"])["resources"]["limits"]
    for value, valid in ((64, True), ("64", True), ("500m", True), (64.5, False), (True, False)):
        limits["cpu"] = value
        assert (validation_errors(manifest, crds) == []) is valid, value


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_sets_no_field_with_unchecked_cel_rules(path, crds):
    manifest = read_yaml(path)
    schema = crds[(manifest["apiVersion"], manifest["kind"])]
    assert [p for p, _, node in schema_nodes(manifest, schema) if node.get("x-kubernetes-validations")] == []


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_every_container_is_non_root(path):
    manifest = read_yaml(path)
    pods = pod_specs(manifest)
    image_user = int(re.search(r"^USER (\d+)", dockerfile(), re.M).group(1))
    if manifest["kind"] == "RayJob" and manifest["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
        assert "submitter" in pods, "KubeRay's default submitter pod (no submitterPodTemplate) sets no securityContext"
        assert pods["submitter"].get("restartPolicy") in ("Never", "OnFailure"), "a Job's pod may not restart Always"
    autoscaling = cluster_spec(manifest).get("enableInTreeAutoscaling")
    assert not autoscaling, "the autoscaler container would need its own securityContext"
    for role, pod in pods.items():
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, role
        assert context.get("runAsUser") == image_user != 0, f"{role}: run as the image's user, {image_user}"
        for container in pod.get("initContainers", []) + pod["containers"]:
            own = container.get("securityContext", {})
            assert own.get("allowPrivilegeEscalation") is False, (role, container["name"])
            assert own.get("runAsUser", context["runAsUser"]) != 0, (role, container["name"])
            assert own.get("privileged") is not True, (role, container["name"])


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_runs_the_image_the_dockerfile_builds(path):
    manifest = read_yaml(path)
    images = {container["image"] for pod in pod_specs(manifest).values() for container in pod["containers"]}
    assert images == {image_tag()}
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        version = re.search(r'^version = "(.+)"$', f.read(), re.M).group(1)
    assert image_tag().split(":")[-1].startswith(version + "-"), "the image tag names the project version"
    ray_pin = locked_packages()["ray"][0]
    assert cluster_spec(manifest).get("rayVersion") == ray_pin, "KubeRay picks its health checks by rayVersion"


@pytest.mark.parametrize("path", RAYJOBS, ids=name)
def test_entrypoint_runs_a_job_of_the_image(path, shared_data):
    directory, module, job, overrides = entrypoint_command(read_yaml(path)["spec"]["entrypoint"])
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile(), re.M).group(1)
    assert directory == workdir, f"the entrypoint runs in {directory}, the image's project is in {workdir}"
    spec = importlib.util.find_spec(module)
    is_package = spec is not None and spec.submodule_search_locations
    runnable = spec is not None and (not is_package or importlib.util.find_spec(module + ".__main__"))
    assert runnable, f"`python -m {module}` finds nothing to run"
    local = image_path(os.path.join(directory, job))
    assert local and os.path.isfile(local), f"cluster/Dockerfile copies no {job} into {directory}"
    for job_path, job_overrides in jobs_of(path):  # a job, or each job of a suite
        # Nothing but the dataset and the reward model needs the volume.
        load_job(job_path, job_overrides + local_overrides(job_path, shared_data))


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_cluster_covers_every_stage(path, shared_data):
    manifest = read_yaml(path)
    cpus, gpus, largest_pod = ray_capacity(manifest)
    declared = [yaml.safe_load(params.get("resources", "{}")) for _, _, params, _ in ray_groups(manifest)]
    for job_path, overrides in jobs_of(path):
        job = load_job(job_path, overrides + local_overrides(job_path, shared_data))
        for stage, (at_once, per_actor) in gpu_demand(job).items():
            assert at_once <= gpus, f"{name(job_path)}: {stage} asks for {at_once} GPUs, the cluster has {gpus:g}"
            assert per_actor <= largest_pod, f"{name(job_path)}: one {stage} actor needs {per_actor} GPUs on one pod"
        for stage in ("generate", "score", "reward", "rate", "evaluate"):
            section = getattr(job, stage)
            pool_cpus(section.actors, section.cpus_per_actor, cpus, stage)  # raises if Ray Data would starve
        for resource in job.train.resources_per_worker:
            assert any(resource in params for params in declared), f"no Ray node offers {resource!r}"


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_job_paths_are_on_one_shared_volume(path):
    manifest = read_yaml(path)
    for job_path, overrides in jobs_of(path):
        raw = read_yaml(job_path)
        assert os.path.isabs(raw["run_dir"]), "a relative run_dir would land in the pod and vanish with it"
        for job_file_path in set(absolute_paths(raw)):
            claims = set()
            for group, _, _, pod in ray_groups(manifest):
                mounts = [
                    (volume, read_only)
                    for mount, volume, read_only in volume_mounts(pod)
                    if job_file_path == mount or job_file_path.startswith(mount.rstrip("/") + "/")
                ]
                assert mounts, f"{name(job_path)}: {job_file_path} is on no volume of the {group} pods"
                volume, read_only = mounts[-1]
                assert "persistentVolumeClaim" in volume and not read_only, f"{group}: {job_file_path}"
                claims.add(volume["persistentVolumeClaim"]["claimName"])
            assert len(claims) == 1, f"{job_file_path}: head and workers must see the same volume, not {claims}"


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_shared_memory_holds_the_object_store(path):
    for group, _, params, pod in ray_groups(read_yaml(path)):
        shm = [volume for mount, volume, _ in volume_mounts(pod) if mount == "/dev/shm"]
        assert shm and shm[0].get("emptyDir", {}).get("medium") == "Memory", f"{group}: /dev/shm is not in memory"
        if "object-store-memory" in params and "sizeLimit" in shm[0]["emptyDir"]:
            assert int(params["object-store-memory"]) <= quantity(shm[0]["emptyDir"]["sizeLimit"]), group


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_ray_asks_every_client_for_a_token(path):
    """Token authentication on every cluster (KubeRay's authOptions), from one Secret the
    docs say how to make."""
    assert cluster_spec(read_yaml(path))["authOptions"] == {"mode": "token", "secretName": "dsw-ray-auth"}
    with open(os.path.join(ROOT, "docs", "cluster.md")) as f:
        assert "kubectl create secret generic dsw-ray-auth" in f.read()


@pytest.mark.parametrize("path", MANIFESTS, ids=name)
def test_the_network_policy_admits_every_pod_of_the_manifests_and_no_other(path):
    """Every pod the manifests run carries the label the NetworkPolicy selects, and the policy
    lets in traffic from those pods only."""
    manifest, policy = read_yaml(path), read_yaml(NETWORK_POLICY)
    label = policy["spec"]["podSelector"]["matchLabels"]
    assert (policy["apiVersion"], policy["kind"], policy["spec"]["policyTypes"]) == ("networking.k8s.io/v1", "NetworkPolicy", ["Ingress"])
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": label}}]}], "from our own pods only"
    templates = [group["template"] for group in [cluster_spec(manifest)["headGroupSpec"], *cluster_spec(manifest)["workerGroupSpecs"]]]
    if manifest["kind"] == "RayJob":
        templates.append(manifest["spec"]["submitterPodTemplate"])
        assert manifest["spec"]["backoffLimit"] >= 1, "a retry resumes where the failed attempt stopped"
    for template in templates:
        assert label.items() <= template["metadata"]["labels"].items()


def locked_packages() -> dict[str, tuple[str, list[str]]]:
    """cluster/requirements.lock: each package's normalized name -> (version, its sha256 hashes)."""
    from packaging.utils import canonicalize_name

    with open(os.path.join(ROOT, "cluster", "requirements.lock")) as f:
        entries = re.split(r"\n(?=\S)", f.read())
    locked = {}
    for entry in entries:
        pin = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", entry)
        if pin:
            locked[canonicalize_name(pin.group(1))] = (pin.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return locked


def test_the_image_installs_a_hashed_lock_that_holds_its_pins_and_dsw_rays_needs():
    """The image's whole Python tree comes from cluster/requirements.lock, every file checked
    against its hashes; the lock keeps each pin of cluster/requirements.in and satisfies
    dsw-ray's own requirements (what the build's `pip check` would otherwise find)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = locked_packages()
    assert len(locked) > 100 and all(hashes for _, hashes in locked.values()), "every package with its hashes"
    with open(os.path.join(ROOT, "cluster", "requirements.in")) as f:
        pins = [Requirement(line) for line in f.read().splitlines() if line.strip() and not line.startswith("#")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        needs = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    for requirement in pins + needs:
        version = locked.get(canonicalize_name(requirement.name), (None,))[0]
        assert version is not None and requirement.specifier.contains(version), f"{requirement} against {version}"
    installs = [line for line in re.split(r"(?<!\\)\n", dockerfile()) if "pip install" in line and not line.startswith("#")]
    assert len(installs) == 2, installs
    assert "--require-hashes --no-deps -r /opt/dsw-ray/requirements.lock" in installs[0]
    assert os.path.normpath(image_path("/opt/dsw-ray/requirements.lock")) == os.path.join(ROOT, "cluster", "requirements.lock")
    assert "--no-deps /opt/dsw-ray" in installs[1], "dsw-ray itself may pull nothing the lock did not choose"
