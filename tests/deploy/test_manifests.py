"""The deployment manifests (deploy/), checked offline: no Docker, no Kubernetes here.

- deploy/k8s/*.yaml against the Kubernetes JSON schemas that ``kubernetes-validate``
  bundles (strict: an unknown field fails too), for the oldest and the newest Kubernetes
  version checked (``K8S_VERSIONS``);
- deploy/compose.yaml against the Compose Specification's JSON schema as vendored by
  ``check-jsonschema`` (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``), as
  written and with its ``${VAR}`` filled in;
- what docs/deploy.md promises of them: a workload per role (Deployments for the
  collectors and query nodes, a StatefulSet of several processors with a volume each),
  the HPA on the collectors, PDBs that select a workload, every probe on /healthz at the
  container's port, the hardening, settings that exist, and no secret written in any
  file;
- and that both validators reject a broken copy, so that these checks can fail.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from aap.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
ROLES = ("collector", "processor", "query")
WORKLOAD_KINDS = {"collector": "Deployment", "processor": "StatefulSet", "query": "Deployment"}
PROCESSORS = ("processor-1", "processor-2")
"""compose's processor services: one each, as each needs a named volume of its own."""
COMPOSE_ROLES = {"collector": "collector", "processor-1": "processor",
                 "processor-2": "processor", "query": "query"}
"""compose's AAP services and the role each runs."""
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
PORT = 8000
IMAGE = "aap:0.1.0"

PENDING_SETTINGS: set[str] = set()
"""Settings the manifests set that src/aap/settings.py does not declare yet (none now:
the Kafka log and PostgreSQL's shared state are declared; docs/deploy.md says how far
each goes)."""
DECLARED = {s.env for s in SETTINGS}
SECRET_SETTINGS = {s.env for s in SETTINGS if s.secret} | {"AAP_S3_ACCESS_KEY"}
"""Credentials: only ever in the Secret aap-credentials or in deploy/.env (the access key
is not ``secret=True`` in settings.py, being half of a credential, but is kept as one)."""
CREDENTIALS = {"AAP_META_URL", "AAP_S3_ACCESS_KEY", "AAP_S3_SECRET_KEY", "AAP_MASTER_KEY",
               "AAP_ID_HASH_KEY", "AAP_AUDIT_KEY", "AAP_SUBJECT_TOKEN_KEY", "AAP_METRICS_TOKEN"}
"""What docs/deploy.md tells to put in the Secret aap-credentials."""
REQUIRED_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}$")


# --- loading ----------------------------------------------------------------------------


@cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every Kubernetes object in deploy/k8s/ (not the kustomization), with its file."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return tuple(out)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    """The objects that run pods: the Deployments and the StatefulSet."""
    return of_kind("Deployment") + of_kind("StatefulSet")


def workload(name: str) -> dict[str, Any]:
    found = [w for w in workloads() if w["metadata"]["name"] == name]
    assert len(found) == 1, f"workload {name}: {len(found)} found"
    return found[0]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


@cache
def compose_text() -> str:
    """compose.yaml without its comment lines (compose interpolates values, not comments)."""
    lines = COMPOSE.read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.lstrip().startswith("#"))


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(compose_text())
    assert isinstance(doc, dict)
    return doc


@cache
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def compose_errors(doc: object) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation, the forms compose.yaml uses: ``$$`` is a ``$``,
    ``${VAR:?message}`` is VAR's value, and an error when VAR is unset or empty."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, required = m.group(1), m.group(2)
        if not env.get(name):
            if required is not None:
                raise KeyError(f"{name}: {required}")
            return ""
        return env[name]

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::\?([^}]*))?\}", one, text)


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {k: str(v) for k, v in env.items()}


# --- schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_k8s_object_is_valid(version: str) -> None:
    failures = []
    for name, doc in k8s_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.path))
            failures.append(f"{name} {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
    assert not failures, "\n".join(failures)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == "aap"
    assert {doc["metadata"].get("namespace", "aap") for _, doc in k8s_documents()} == {"aap"}


def test_compose_file_is_valid_as_written_and_filled_in() -> None:
    assert compose_errors(compose()) == []
    filled = {name: f"placeholder-{name.lower()}" for name in env_example()}
    assert compose_errors(yaml.safe_load(interpolate(compose_text(), filled))) == []


def test_validators_reject_a_broken_copy() -> None:
    """Each validator fails a copy with a wrong field type (or an unknown field), so the
    checks above can fail."""
    deployment = named("Deployment", "aap-collector")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type 'integer'"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    misspelt = copy.deepcopy(deployment)
    probe = misspelt["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[-1], strict=True)
    hpa = copy.deepcopy(named("HorizontalPodAutoscaler", "aap-collector"))
    hpa["spec"]["minReplicas"] = [2]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)

    # The Compose schema takes a string wherever a number or a boolean goes (``${VAR}``
    # may fill it in): the wrong types here are ones no interpolation can make right.
    doc = copy.deepcopy(compose())
    doc["services"]["collector"]["ports"] = {"8000": 8000}
    assert "services.collector.ports: {'8000': 8000} is not of type 'array'" in compose_errors(doc)
    doc = copy.deepcopy(compose())
    doc["services"]["query"]["healthcheck"]["retries"] = [6]
    assert any("healthcheck.retries: [6] is not of type" in e for e in compose_errors(doc))
    doc = copy.deepcopy(compose())
    doc["services"]["query"]["cap_drop"] = "ALL"
    assert "services.query.cap_drop: 'ALL' is not of type 'array'" in compose_errors(doc)
    statefulset = copy.deepcopy(named("StatefulSet", "aap-processor"))
    statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = "ReadWriteOnce"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type 'array'"):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[-1], strict=True)
    statefulset = copy.deepcopy(named("StatefulSet", "aap-processor"))
    statefulset["spec"]["podManagementPolicy"] = ["Parallel"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[-1], strict=True)
    doc = copy.deepcopy(compose())
    doc["services"]["processor-1"]["comand"] = doc["services"]["processor-1"].pop("command")
    assert any("'comand' was unexpected" in e for e in compose_errors(doc))


def test_validators_are_the_pinned_versions() -> None:
    """The versions pyproject.toml pins (the test extra) are the ones that ran."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = dict(p.split("==") for p in pyproject["project"]["optional-dependencies"]["test"])
    for package in ("kubernetes-validate", "check-jsonschema"):
        assert pins[package] == metadata.version(package), package


# --- what the Kubernetes manifests promise ------------------------------------------------


def test_every_role_has_a_workload_running_it() -> None:
    assert sorted(d["metadata"]["name"] for d in workloads()) == [
        f"aap-{role}" for role in ROLES]
    for role in ROLES:
        deployment = named(WORKLOAD_KINDS[role], f"aap-{role}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", "--role", role]
        assert container["image"] == IMAGE
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == role
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_role_has_a_service_on_its_pods() -> None:
    """The collectors' and query nodes' Services route to them; the processors' is the
    StatefulSet's headless service (its serviceName), which routes nothing."""
    assert sorted(s["metadata"]["name"] for s in of_kind("Service")) == [
        f"aap-{role}" for role in ROLES]
    for service in of_kind("Service"):
        deployment = workload(service["metadata"]["name"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {p["name"] for c in containers(deployment) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_the_hpa_scales_the_collectors_on_cpu() -> None:
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == "aap-collector"
    named("Deployment", target["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # utilisation is a share of the requests: the collector must request CPU
    (container,) = named("Deployment", "aap-collector")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]


def test_the_processors_are_several_with_a_volume_each() -> None:
    """Several processors share the topic's partitions (AAP_META_URL and
    AAP_PUBLISH_SECONDS set): the StatefulSet runs more than one, each with a
    ReadWriteOnce volume of its own as its data dir, started in parallel and updated one
    at a time; compose runs two processor services on two named volumes."""
    statefulset = named("StatefulSet", "aap-processor")
    spec = statefulset["spec"]
    assert spec["replicas"] > 1
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    headless = named("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    pod = spec["template"]["spec"]
    # the data dir is the per-replica claim, not a volume the pods would share
    assert claim["metadata"]["name"] not in {v["name"] for v in pod.get("volumes", [])}
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert of_kind("PersistentVolumeClaim") == [], "no claim the replicas would share"
    config = named("ConfigMap", "aap-config")["data"]
    assert float(config["AAP_PUBLISH_SECONDS"]) > 0 and "AAP_META_URL" in CREDENTIALS

    services = compose()["services"]
    assert "processor" not in services
    volumes = []
    for name in PROCESSORS:
        env = compose_env(name)
        assert float(env["AAP_PUBLISH_SECONDS"]) > 0 and env["AAP_META_URL"]
        assert "deploy" not in services[name] or services[name]["deploy"].get("replicas", 1) == 1
        (volume,) = [v for v in services[name]["volumes"] if v.endswith(":/data")]
        volumes.append(volume.split(":")[0])
    assert len(set(volumes)) == len(PROCESSORS)
    assert set(volumes) <= compose()["volumes"].keys()


def test_each_pdb_selects_a_workload_and_each_workload_has_one() -> None:
    covered = set()
    for pdb in of_kind("PodDisruptionBudget"):
        wanted = pdb["spec"]["selector"]["matchLabels"].items()
        selected = [d["metadata"]["name"] for d in workloads()
                    if wanted <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"{pdb['metadata']['name']} selects {selected}"
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
        covered.update(selected)
    assert covered == {f"aap-{role}" for role in ROLES}


def test_every_probe_hits_healthz_on_the_containers_port() -> None:
    for deployment in workloads():
        for container in containers(deployment):
            ports = container["ports"]
            assert [p["containerPort"] for p in ports] == [PORT]
            names_and_numbers = {p["containerPort"] for p in ports} | {p["name"] for p in ports}
            assert {"livenessProbe", "readinessProbe"} <= container.keys(), container["name"]
            probes = [container[k] for k in container if k.endswith("Probe")]
            for probe in probes:
                assert probe["httpGet"]["path"] == "/healthz"
                assert probe["httpGet"]["port"] in names_and_numbers


def test_every_container_is_limited_and_hardened() -> None:
    for deployment in workloads():
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == dockerfile_uid(), name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"] for v in pod["volumes"]} | {
            c["metadata"]["name"] for c in deployment["spec"].get("volumeClaimTemplates", [])}
        for container in containers(deployment):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), (name, kind)
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            # a read-only root needs somewhere to write: the data dir and /tmp
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts.keys(), name
            assert set(mounts.values()) <= volumes, name


def test_settings_come_from_the_configmap_and_the_secret() -> None:
    (configmap,) = of_kind("ConfigMap")
    config = configmap["data"]
    assert config["AAP_LOG_URL"] == "kafka://kafka:9092/aap-events"
    assert config["AAP_TIER_URL"] == "s3://aap-tiers/warehouse"
    assert config["AAP_S3_ENDPOINT_URL"].startswith("http")
    assert config["AAP_DATA_DIR"] == "/data" and config["AAP_PORT"] == str(PORT)
    assert not SECRET_SETTINGS & config.keys()
    for deployment in workloads():
        for container in containers(deployment):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in sources
            assert {"secretRef": {"name": "aap-credentials"}} in sources
            literal = {e["name"] for e in container.get("env", []) if "value" in e}
            assert not literal & SECRET_SETTINGS, deployment["metadata"]["name"]
    assert of_kind("Secret") == [], "credentials are referenced, never written in deploy/k8s"


def test_every_setting_named_exists_or_is_being_built() -> None:
    """A misspelt setting is ignored by AAP without a word: every ``AAP_*`` the manifests
    set is one settings.py declares, or the one that is being built."""
    names = set(named("ConfigMap", "aap-config")["data"]) | CREDENTIALS
    for deployment in workloads():
        for container in containers(deployment):
            names |= {e["name"] for e in container.get("env", [])}
    for service in COMPOSE_ROLES:
        names |= set(compose_env(service))
    names |= set(re.findall(r"\bAAP_[A-Z0-9_]+", DOCKERFILE.read_text()))
    unknown = {n for n in names if n.startswith("AAP_")} - DECLARED - PENDING_SETTINGS
    assert not unknown
    assert "AAP_S3_ENDPOINT" not in names  # the setting is AAP_S3_ENDPOINT_URL


# --- what compose.yaml promises -----------------------------------------------------------


def test_compose_runs_the_backends_and_every_role() -> None:
    services = compose()["services"]
    assert {"kafka", "postgres", "minio", *COMPOSE_ROLES} <= services.keys()
    assert set(COMPOSE_ROLES.values()) == set(ROLES)
    for name, role in COMPOSE_ROLES.items():
        service = services[name]
        assert service["command"] == ["serve", "--role", role]
        assert service["image"] == IMAGE
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert {"kafka-init", "postgres", "minio-init"} <= service["depends_on"].keys()


def test_compose_roles_have_the_backends_settings() -> None:
    for name in COMPOSE_ROLES:
        env = compose_env(name)
        assert env["AAP_LOG_URL"] == "kafka://kafka:9092/aap-events"
        assert env["AAP_TIER_URL"] == "s3://aap-tiers/warehouse"
        assert env["AAP_S3_ENDPOINT_URL"] == "http://minio:9000"
        user, _, password_and_host = env["AAP_META_URL"].removeprefix("postgresql://").partition(":")
        password, _, where = password_and_host.rpartition("@")
        assert user == "aap" and where == "postgres:5432/aap"
        assert REQUIRED_REF.match(password), "the password comes from deploy/.env"
        for name in ("AAP_S3_ACCESS_KEY", "AAP_S3_SECRET_KEY", "AAP_MASTER_KEY", "AAP_ID_HASH_KEY",
                     "AAP_AUDIT_KEY", "AAP_SUBJECT_TOKEN_KEY"):
            assert REQUIRED_REF.match(env[name]), name


def test_compose_healthchecks_ask_healthz() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot set-up jobs
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
        if name in COMPOSE_ROLES:
            assert f"http://127.0.0.1:{PORT}/healthz" in " ".join(test)


def test_compose_needs_every_secret_and_has_no_default() -> None:
    """Every ``${VAR}`` is ``${VAR:?message}`` (no default value, no silent empty one), is
    a line of deploy/.env.example, and compose without it stops with its message."""
    refs = re.findall(r"(?<!\$)\$\{[^}]*\}", compose_text())
    assert refs
    assert all(REQUIRED_REF.match(ref) for ref in refs), refs
    names = {ref[2:].split(":", 1)[0] for ref in refs}
    example = env_example()
    assert names == example.keys()
    filled = {name: "x" for name in names}
    for name in names:
        with pytest.raises(KeyError, match=name):
            interpolate(compose_text(), {k: v for k, v in filled.items() if k != name})


# --- no secret in any file ----------------------------------------------------------------


SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|ROOT_USER)\w*['\"]?\s*[:=]\s*(?P<value>\S.*)?$")


def deploy_files() -> Iterator[Path]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != ".env":
            yield path
    yield ROOT / "docs" / "deploy.md"


def is_reference(value: str) -> bool:
    """Not a secret but where one comes from: compose's ``${VAR:?}``, the container
    shell's ``"$$VAR"``, a Kubernetes reference, or nothing."""
    value = value.strip().strip("'\"")
    return (not value or bool(REQUIRED_REF.match(value)) or value.startswith(("$$", '"$$'))
            or value.startswith("<") or value in ("aap-credentials",))


def literal_secrets(text: str) -> list[tuple[int, str]]:
    """The lines of ``text`` that write a secret's value, comments included."""
    found = []
    for number, code in enumerate(text.splitlines(), 1):
        # a required reference names where a secret comes from: not one itself
        code = re.sub(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}", "<ref>", code)
        m = SECRETISH.search(code)
        if m and m.group("value") and not is_reference(m.group("value")):
            found.append((number, code.strip()))
        elif re.search(r"://[^/\s:@]+:(?!<)[^@\s]+@", code):
            found.append((number, code.strip()))
    return found


def test_no_literal_secret_in_any_file() -> None:
    assert ENV_EXAMPLE.is_file()
    assert all(value == "" for value in env_example().values()), "the example has no values"
    found = []
    for path in deploy_files():
        found += [f"{path.relative_to(ROOT)}:{n}: {line}"
                  for n, line in literal_secrets(path.read_text())]
    assert not found, "\n".join(found)
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize(("line", "secret"), [
    ("POSTGRES_PASSWORD: hunter2", True),
    ("  AAP_S3_SECRET_KEY: 'wJalrXUtnFEMI'", True),
    ("AAP_MASTER_KEY=q2ZKd8V3mN0=", True),
    ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-hunter2}", True),
    ("AAP_META_URL: postgresql://aap:hunter2@postgres:5432/aap", True),
    ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}", False),
    ("AAP_META_URL: postgresql://aap:${POSTGRES_PASSWORD:?set it}@postgres:5432/aap", False),
    ('mc alias set local http://minio:9000 "$$MINIO_ROOT_USER" "$$MINIO_ROOT_PASSWORD"', False),
    ("POSTGRES_PASSWORD=", False),
    ("AAP_MASTER_KEY: x  # never: AAP_MASTER_KEY: real", True),
    ("# AAP_MASTER_KEY: q2ZKd8V3mN0= in a comment", True),
])
def test_the_secret_scan_finds_a_written_secret(line: str, secret: bool) -> None:
    assert bool(literal_secrets(line)) is secret


# --- the image ----------------------------------------------------------------------------


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert users, "the Dockerfile names a USER"
    return int(users[-1].split(":")[0])


def test_dockerfile_installs_aap_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages[-1] == "python:3.11-slim"
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert dockerfile_uid() > 0
    assert re.search(r"^ENTRYPOINT \[\"aap\"\]", text, re.M)
    assert f"EXPOSE {PORT}" in text
