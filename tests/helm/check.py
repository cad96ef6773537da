#!/usr/bin/env python3
"""Renders the Helm chart deploy/helm/dfp offline and checks what it produces, without a Kubernetes cluster.

For every values file in tests/helm/values/ (release "prod", namespace "security"):

- renders the chart with helm-python-sdk (Helm's own SDK: values.schema.json is enforced as on install);
- validates every object strictly (unknown fields rejected) against the Kubernetes API schemas of the
  chart's oldest supported version and a recent one (kubernetes-validate); the Prometheus Operator kinds,
  which it has no schemas for, against a strict schema of the fields the chart writes;
- compares the render with tests/helm/snapshots/<values>.yaml (`--update` writes them again);
- asserts the invariants: the hostfile lists one stable name per replica, in ordinal order, under the
  headless service (mode cluster); every consumer passes consumer_index=$(DFP_POD_INDEX), its pod-index
  label, and consumers=<replicas>, with no hostfile or cluster port (mode consumers); state per pod; every
  $(VAR) in args names an env var of the container; probes on /healthz and /readyz; no shell; non-root,
  read-only, no capabilities; credentials only from Secrets, every Secret the values name is used, no
  secret text in any ConfigMap.

Then: the chart's pipelines and dashboard equal the repository's, the chart's appVersion is the workspace
version, and wrong values (replicas 0, an unknown key, an inline password, …) fail with a clear message.

    $DFP_HELM_PYTHON tests/helm/check.py [--update]

Exits 0 when everything holds, 1 naming each failure, 2 when a module is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import sys
from pathlib import Path

try:
    import tomllib

    import helm_python
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the message is the point
    sys.stderr.write(
        f"tests/helm/check.py: the Python module {e.name!r} is not installed for {sys.executable}.\n"
        "It needs helm-python-sdk 0.2.2 and kubernetes-validate: ./dev test installs them into\n"
        "~/.cache/dfp/helm-venv (and exports DFP_HELM_PYTHON), or:\n"
        "  python3 -m venv ~/.cache/dfp/helm-venv && ~/.cache/dfp/helm-venv/bin/pip install "
        "helm-python-sdk==0.2.2 kubernetes-validate==1.37.0\n"
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "dfp"
HERE = ROOT / "tests" / "helm"
VALUES_DIR = HERE / "values"
SNAPSHOTS = HERE / "snapshots"
RELEASE = "prod"
NAMESPACE = "security"
# The chart's minimum (the pod-index label) and a recent release.
KUBE_VERSIONS = ["1.28.0", "1.33.0"]

# Environment variables that hold credentials: never a literal value, always a secretKeyRef.
CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "KAFKA_SASL_PASSWORD", "ES_PASSWORD", "ES_API_KEY",
    "DFP_SERVE_TOKEN", "DFP_ADMIN_TOKEN", "DFP_CLUSTER_SECRET", "EVENTHUBS_CONNECTION_STRING",
}
CREDENTIAL_NAME = re.compile(r"(?i)(pass(word)?|passwd|secret|token|api_?key|credentials?|private_?key|access_key)")
# ...unless the name says it holds where the credential is: a file, a path, another variable's name.
CREDENTIAL_REFERENCE = re.compile(r"(?i)_(file|path|location|env)$")
# Variables (--var) whose name says credential; *_env and *_file name a variable or file, which is fine.
CREDENTIAL_VAR = re.compile(r"(?i)(pass(word)?|passwd|secret|token|api_?key|credentials?|private_?key)$")
# Secret-looking text the wrong-values cases try to put into the chart: it must appear nowhere.
FAKE_SECRETS = [
    "hunter2-fake-kafka-password", "AKIAFAKEFAKEFAKEFAKE", "fake/secret/access/key+0123456789abcdef",
    "fake-mlflow-token-0123456789", "fake-es-password-0123", "fake-admin-token-0123456789abcdef",
    "fake-cluster-secret-0123456789", "fake-console-token-0123456789",
]
SHELLS = {"sh", "bash", "ash", "dash", "zsh", "busybox"}
# A $(NAME) reference that Kubernetes expands in command and args ("$$(" is a literal "$(").
ENV_REFERENCE = re.compile(r"(?<!\$)\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.context = ""

    def add(self, message: str) -> None:
        self.items.append(f"{self.context}: {message}" if self.context else message)

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            self.add(message)
        return bool(condition)


F = Failures()


# ---------------------------------------------------------------------------------------------- rendering

def render(chart, values: dict) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def objects_of(manifests: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                out.append((path, doc))
    return out


class LiteralDumper(yaml.SafeDumper):
    pass


def _str(dumper, data):
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


LiteralDumper.add_representer(str, _str)


def snapshot_text(objs: list[tuple[str, dict]], chart_files: dict[str, str], dashboard: str, V: dict) -> str:
    """The render as YAML, stable: the chart's own pipeline files and dashboard (checked byte for byte
    elsewhere) and the config checksums are replaced by placeholders, so that a pipeline edit does not
    change every snapshot."""
    parts = []
    for path, obj in objs:
        obj = json.loads(json.dumps(obj))
        if obj.get("kind") == "ConfigMap":
            data = obj.get("data") or {}
            for key, text in data.items():
                if chart_files.get(key) == text:
                    data[key] = f"<the chart's pipelines/{key}>"
                elif key == "dfp-dashboard.json" and text.strip() == dashboard.replace(
                    "${DS_PROMETHEUS}", V["monitoring"]["grafanaDashboard"]["datasourceUid"] or "${DS_PROMETHEUS}"
                ).strip():
                    data[key] = "<the chart's dashboards/dfp-dashboard.json, ${DS_PROMETHEUS} replaced>"
        for pod in pod_templates(obj):
            annotations = pod.get("metadata", {}).get("annotations") or {}
            if "checksum/config" in annotations:
                annotations["checksum/config"] = "<sha256 of the chart's ConfigMaps>"
        parts.append(f"# Source: {path}\n" + yaml.dump(obj, Dumper=LiteralDumper, sort_keys=False, width=120))
    return "---\n".join(parts)


# ---------------------------------------------------------------------------------------------- helpers

def pod_templates(obj: dict) -> list[dict]:
    kind = obj.get("kind")
    if kind in ("StatefulSet", "Deployment"):
        return [obj["spec"]["template"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]]
    return []


def find(objs, kind: str, name: str | None = None) -> list[dict]:
    return [o for _, o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs, kind: str, name: str | None = None) -> dict | None:
    found = find(objs, kind, name)
    F.check(len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0] if len(found) == 1 else None


def component(obj: dict) -> str | None:
    return obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in (small or {}).items())


def arg_after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def var_args(args: list[str]) -> dict[str, str]:
    out = {}
    for i, a in enumerate(args):
        if a == "--var" and i + 1 < len(args):
            name, _, value = args[i + 1].partition("=")
            out[name] = value
    return out


def get(d: dict, path: str, default=None):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def mount_for(container: dict, pod_spec: dict, file_path: str) -> tuple[dict, dict] | tuple[None, None]:
    """The volume mount (and its volume) under which file_path lies, the longest mount path first."""
    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
    for m in mounts:
        if file_path.startswith(m["mountPath"].rstrip("/") + "/"):
            vols = {v["name"]: v for v in pod_spec.get("volumes") or []}
            return m, vols.get(m["name"], {})
    return None, None


def secret_item(volume: dict, relative: str) -> tuple[str, str] | None:
    """(secret name, key) that a secret or projected volume puts at `relative`."""
    sources = []
    if "secret" in volume:
        sources.append(volume["secret"] | {"name": volume["secret"].get("secretName")})
    for s in get(volume, "projected.sources", []) or []:
        if "secret" in s:
            sources.append(s["secret"])
    for s in sources:
        for item in s.get("items") or []:
            if item["path"] == relative:
                return s["name"], item["key"]
    return None


# ------------------------------------------------------------------------------------ Kubernetes schemas

MONITOR_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port", "path"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
        "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
        "authorization": {
            "type": "object",
            "additionalProperties": False,
            "required": ["credentials"],
            "properties": {
                "type": {"type": "string"},
                "credentials": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "key"],
                    "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}},
                },
            },
        },
    },
}


def monitor_schema(kind: str) -> dict:
    endpoints = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "matchExpressions": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["key", "operator"],
                                    "properties": {
                                        "key": {"type": "string"},
                                        "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                        "values": {"type": "array", "items": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}, "any": {"type": "boolean"}},
                    },
                    endpoints: {"type": "array", "minItems": 1, "items": MONITOR_ENDPOINT},
                },
            },
        },
    }


def validate_objects(objs) -> int:
    checked = 0
    for path, obj in objs:
        label = f"{obj.get('kind')} {get(obj, 'metadata.name')} ({path})"
        if not F.check(get(obj, "metadata.namespace") == NAMESPACE, f"{label}: metadata.namespace is not {NAMESPACE}"):
            continue
        if obj.get("apiVersion") == "monitoring.coreos.com/v1":
            errors = sorted(jsonschema.Draft7Validator(monitor_schema(obj["kind"])).iter_errors(obj), key=str)
            for e in errors:
                F.add(f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            checked += 1
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.utils.ValidationError as e:
                where = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
                F.add(f"{label}: not a valid {obj['kind']} for Kubernetes {version}: {where}: {e.message}")
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                F.add(f"{label}: Kubernetes {version} has no {obj['apiVersion']} {obj['kind']}: {e}")
        checked += 1
    return checked


# ------------------------------------------------------------------------------------------- invariants

def check_pods(objs, V: dict) -> None:
    repo = V["image"]["repository"]
    for _, obj in objs:
        for pod in pod_templates(obj):
            label = f"{obj['kind']} {obj['metadata']['name']}"
            spec = pod["spec"]
            sel = get(obj, "spec.selector.matchLabels") if obj["kind"] != "CronJob" else None
            if sel is not None:
                F.check(subset(sel, pod["metadata"]["labels"]), f"{label}: its selector {sel} does not match its pod labels")
            psc = spec.get("securityContext") or {}
            F.check(psc.get("runAsNonRoot") is True, f"{label}: pod securityContext.runAsNonRoot is not true")
            F.check(isinstance(psc.get("fsGroup"), int), f"{label}: pod securityContext.fsGroup is not set")
            # Pod Security Standards, "restricted": a seccomp profile, and only these volume types.
            F.check(get(psc, "seccompProfile.type") in ("RuntimeDefault", "Localhost"), f"{label}: no seccomp profile (Pod Security Standard restricted)")
            for v in spec.get("volumes") or []:
                kinds = set(v) - {"name"}
                F.check(kinds <= {"configMap", "secret", "projected", "emptyDir", "persistentVolumeClaim", "downwardAPI", "csi", "ephemeral"},
                        f"{label}: volume {v['name']} is a {sorted(kinds)} volume, not allowed by the restricted Pod Security Standard")
            volumes = {v["name"] for v in spec.get("volumes") or []}
            volumes |= {get(t, "metadata.name") for t in get(obj, "spec.volumeClaimTemplates", []) or []}
            for c in (spec.get("initContainers") or []) + spec["containers"]:
                cl = f"{label} container {c['name']}"
                sc = c.get("securityContext") or {}
                F.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cl}: may run as root")
                F.check(sc.get("readOnlyRootFilesystem") is True, f"{cl}: root filesystem is writable")
                F.check(sc.get("allowPrivilegeEscalation") is False, f"{cl}: allowPrivilegeEscalation is not false")
                F.check("ALL" in (get(sc, "capabilities.drop") or []), f"{cl}: capabilities are not all dropped")
                command = c.get("command") or []
                F.check(bool(command), f"{cl}: no command (the image's entrypoint is not relied on)")
                F.check(not (command and os.path.basename(command[0]) in SHELLS) and "-c" not in command,
                        f"{cl}: runs a shell ({command}); the dfp image has none")
                for m in c.get("volumeMounts") or []:
                    F.check(m["name"] in volumes, f"{cl}: mounts {m['name']}, which is no volume of the pod")
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
                if c["name"] in ("dfp", "console"):
                    F.check("/tmp" in mounts and not mounts["/tmp"].get("readOnly"), f"{cl}: no writable /tmp")
                for name, e in env_of(c).items():
                    if name in CREDENTIAL_ENV or (CREDENTIAL_NAME.search(name) and not CREDENTIAL_REFERENCE.search(name)):
                        F.check("value" not in e and get(e, "valueFrom.secretKeyRef.name"),
                                f"{cl}: env {name} is a credential but not a secretKeyRef: {e}")
                args = c.get("args") or []
                for a in command + args:
                    for ref in ENV_REFERENCE.findall(a.replace("$$", "")):
                        F.check(ref in env_of(c), f"{cl}: argument {a!r} refers to $({ref}), which is no env var of the container (Kubernetes would pass it literally)")
                for name in var_args(args):
                    F.check(not CREDENTIAL_VAR.search(name), f"{cl}: --var {name} passes a credential on the command line")
                if c["name"] in ("dfp", "console"):
                    F.check(c["image"].startswith(repo + ":"), f"{cl}: image {c['image']} is not {repo}:TAG")
                    F.check(command == [V["image"]["binary"]], f"{cl}: command {command} is not [{V['image']['binary']}]")
                    if c["name"] == "dfp":
                        wd = c.get("workingDir")
                        F.check(wd in mounts and not mounts[wd].get("readOnly"), f"{cl}: the working directory {wd} is not a writable volume")
                        F.check("/var/cache/dfp" in mounts and env_of(c).get("XDG_CACHE_HOME", {}).get("value") == "/var/cache/dfp",
                                f"{cl}: no writable XDG_CACHE_HOME (MLflow downloads)")
                        for p in (env_of(c).get("DFP_PLUGIN_PATH", {}).get("value") or "").split(":"):
                            if p and p != "/opt/dfp/plugins":
                                F.check(p in mounts, f"{cl}: DFP_PLUGIN_PATH names {p}, which is not mounted")


def check_inference(objs, V: dict, chart_files: dict[str, str]) -> None:
    inf = V["inference"]
    if not inf["enabled"]:
        F.check(not [o for _, o in objs if component(o) == "inference"], "inference.enabled is false but inference objects are rendered")
        return
    cluster = inf["mode"] == "cluster"
    # Both modes: a StatefulSet (stable ordinals: the process or consumer index; one state claim per pod).
    workload = one(objs, "StatefulSet", f"{RELEASE}-dfp-inference")
    if workload is None:
        return
    F.check(not [d for d in find(objs, "Deployment") if component(d) == "inference"], "a Deployment for inference besides the StatefulSet")
    F.check(workload["spec"]["replicas"] == inf["replicas"], f"StatefulSet replicas {workload['spec']['replicas']} != inference.replicas {inf['replicas']}")
    pod = workload["spec"]["template"]
    spec = pod["spec"]
    dfp = next((c for c in spec["containers"] if c["name"] == "dfp"), None)
    if not F.check(dfp is not None, "inference: no container named dfp"):
        return
    env = env_of(dfp)
    args = dfp["args"]
    F.check(args[:2] == ["run", f"/etc/dfp/pipelines/{inf['pipeline']}"], f"inference args start {args[:2]}, not run + the pipeline")
    F.check(arg_after(args, "--workers") == str(inf["workers"]), "inference: --workers is not inference.workers")
    mount, vol = mount_for(dfp, spec, f"/etc/dfp/pipelines/{inf['pipeline']}")
    configmap = V["pipelines"]["configMap"] or f"{RELEASE}-dfp-pipelines"
    F.check(bool(vol) and get(vol, "configMap.name") == configmap, f"inference: the pipeline file is not mounted from ConfigMap {configmap}")
    vars_ = var_args(args)
    if V["registry"]["location"]:
        F.check(vars_.get("models") == V["registry"]["location"], "inference: --var models is not registry.location")
    if V["kafka"]["brokers"]:
        F.check(vars_.get("brokers") == V["kafka"]["brokers"], "inference: --var brokers is not kafka.brokers")

    # State (checkpoints) per pod: an emptyDir or a claim of the StatefulSet's volumeClaimTemplates, never one
    # claim that every replica would mount.
    state_mount, state_vol = mount_for(dfp, spec, "/var/lib/dfp/x")
    templates = {get(t, "metadata.name") for t in get(workload, "spec.volumeClaimTemplates", []) or []}
    if F.check(bool(state_mount), "inference: /var/lib/dfp is not mounted"):
        if inf["state"]["type"] == "emptyDir":
            F.check("emptyDir" in (state_vol or {}), "inference: state.type emptyDir but the state volume is no emptyDir")
        else:
            F.check(not state_vol and state_mount["name"] in templates,
                    "inference: the state is not a claim per pod (volumeClaimTemplates): checkpoints are per process")

    # Probes and the admin endpoint.
    port = V["admin"]["port"]
    ports = {p["name"]: p for p in dfp.get("ports") or []}
    F.check(get(ports, "admin.containerPort") == port, f"inference: no container port admin = {port}")
    F.check(get(env, "DFP_METRICS_ADDR.value") == f"0.0.0.0:{port}", "inference: DFP_METRICS_ADDR does not bind the admin port on every address")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = get(dfp, f"{probe}.httpGet") or {}
        F.check(got.get("path") == path and got.get("port") in ("admin", port) and got.get("scheme") == V["admin"]["scheme"],
                f"inference: {probe} is not GET {path} on the admin port ({got})")
    if V["admin"]["tokenSecret"]["name"]:
        token = get(env, "DFP_ADMIN_TOKEN_FILE.value")
        m, v = mount_for(dfp, spec, token or "/nonexistent")
        F.check(bool(m) and secret_item(v, token[len(m["mountPath"]) + 1:]) == (V["admin"]["tokenSecret"]["name"], V["admin"]["tokenSecret"]["key"]),
                "inference: DFP_ADMIN_TOKEN_FILE is not the admin token Secret's key")

    services = [s for s in find(objs, "Service") if component(s) == "inference"]
    svc = services[0] if len(services) == 1 else None
    F.check(svc is not None, f"inference: expected one inference Service, found {len(services)}")
    if svc:
        F.check(subset(svc["spec"]["selector"], pod["metadata"]["labels"]), "inference Service does not select the inference pods")
        F.check(workload["spec"].get("serviceName") == svc["metadata"]["name"], "inference: the StatefulSet's serviceName is not the inference Service")
        F.check(svc["spec"].get("clusterIP") == "None", "inference: the inference Service is not headless")

    hostfiles = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-hostfile")]
    policies = [p for p in find(objs, "NetworkPolicy") if subset(p["spec"]["podSelector"].get("matchLabels"), pod["metadata"]["labels"])]
    if not cluster:
        check_consumers(workload, dfp, env, args, vars_, ports, svc, hostfiles, policies, V, chart_files)
        return
    F.check("DFP_POD_INDEX" not in env and "consumer_index" not in vars_ and "consumers" not in vars_,
            "cluster: a consumer's share (DFP_POD_INDEX, consumer_index, consumers) is set on a cluster's process")

    # The cluster: headless service, stable names, the hostfile, the process index.
    sts = workload
    F.check(sts["spec"].get("podManagementPolicy") == "Parallel", "cluster: podManagementPolicy is not Parallel (process 0 is ready only once all are up)")
    F.check(sts["spec"].get("updateStrategy") == inf["cluster"]["updateStrategy"], "cluster: the StatefulSet's updateStrategy is not inference.cluster.updateStrategy")
    if svc:
        F.check(svc["spec"].get("publishNotReadyAddresses") is True, "cluster: publishNotReadyAddresses is not true (processes must resolve each other before they are ready)")
        F.check(any(p["name"] == "cluster" and p["port"] == inf["cluster"]["port"] for p in svc["spec"]["ports"]), "cluster: the Service lacks the cluster port")
    F.check(get(ports, "cluster.containerPort") == inf["cluster"]["port"], "cluster: no container port cluster = inference.cluster.port")
    F.check(get(env, "DFP_PROCESSES.value") == str(inf["replicas"]), f"cluster: DFP_PROCESSES is not {inf['replicas']}")
    F.check(get(env, "DFP_PROCESS.valueFrom.fieldRef.fieldPath") == "metadata.labels['apps.kubernetes.io/pod-index']",
            "cluster: DFP_PROCESS does not come from the pod-index label")
    hostfile = get(env, "DFP_HOSTFILE.value")
    m, v = mount_for(dfp, spec, hostfile or "/nonexistent")
    if F.check(bool(m) and get(v, "configMap.name"), f"cluster: DFP_HOSTFILE {hostfile} is not in a mounted ConfigMap"):
        cm = one(objs, "ConfigMap", get(v, "configMap.name"))
        key = hostfile[len(m["mountPath"].rstrip("/")) + 1:]
        if cm and F.check(key in cm.get("data", {}), f"cluster: ConfigMap {cm['metadata']['name']} has no key {key}"):
            lines = [ln.split("#")[0].strip() for ln in cm["data"][key].splitlines()]
            lines = [ln for ln in lines if ln]
            expected = [
                f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{V['clusterDomain']}:{inf['cluster']['port']}"
                for i in range(inf["replicas"])
            ]
            F.check(len(lines) == inf["replicas"], f"cluster: the hostfile has {len(lines)} line(s) for {inf['replicas']} replica(s)")
            F.check(lines == expected, f"cluster: the hostfile lists {lines}, not the pods' stable names in ordinal order {expected}")
    if inf["cluster"]["secret"]["name"]:
        secret = get(env, "DFP_CLUSTER_SECRET_FILE.value")
        m, v = mount_for(dfp, spec, secret or "/nonexistent")
        F.check(bool(m) and secret_item(v, secret[len(m["mountPath"]) + 1:]) == (inf["cluster"]["secret"]["name"], inf["cluster"]["secret"]["key"]),
                "cluster: DFP_CLUSTER_SECRET_FILE is not the cluster secret's key, mounted from its Secret")
    elif inf["replicas"] > 1:
        F.add("cluster: more than one process without a cluster secret rendered")
    if V["networkPolicy"]["enabled"]:
        F.check(len(policies) == 1, f"cluster: {len(policies)} NetworkPolicies select the inference pods, expected 1")
        for p in policies:
            F.check("Ingress" in p["spec"]["policyTypes"], "cluster: the NetworkPolicy does not restrict ingress")
            rules = [r for r in p["spec"].get("ingress") or [] if any(x.get("port") in (inf["cluster"]["port"], "cluster") for x in r.get("ports") or [])]
            F.check(len(rules) == 1, "cluster: not exactly one ingress rule for the cluster port")
            for r in rules:
                peers = r.get("from") or []
                F.check(len(peers) == 1 and set(peers[0]) == {"podSelector"} and peers[0]["podSelector"].get("matchLabels") == sts["spec"]["selector"]["matchLabels"],
                        f"cluster: the cluster port is open to {peers or 'anyone'}, not only to the StatefulSet's pods")
            for r in p["spec"].get("ingress") or []:
                if not r.get("ports"):
                    F.add("cluster: an ingress rule without ports opens the cluster port too")


def check_consumers(sts, dfp, env, args, vars_, ports, svc, hostfiles, policies, V: dict, chart_files: dict[str, str]) -> None:
    """Mode consumers: independent processes, pod i reading the partitions at positions i mod replicas."""
    inf = V["inference"]
    F.check(sts["spec"].get("updateStrategy") == inf["consumers"]["updateStrategy"], "consumers: the StatefulSet's updateStrategy is not inference.consumers.updateStrategy")
    # Each consumer's share: its index from the pod-index label (expanded by Kubernetes in the args), the count.
    F.check(get(env, "DFP_POD_INDEX.valueFrom.fieldRef.fieldPath") == POD_INDEX_FIELD and "value" not in env.get("DFP_POD_INDEX", {}),
            "consumers: DFP_POD_INDEX does not come from the pod-index label")
    shares = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--var" and args[i + 1].partition("=")[0] in ("consumer_index", "consumers")]
    F.check(sorted(shares) == sorted(["consumer_index=$(DFP_POD_INDEX)", f"consumers={inf['replicas']}"]),
            f"consumers: the args do not pass consumer_index=$(DFP_POD_INDEX) and consumers={inf['replicas']} once each (got {shares})")
    # The pipeline declares both (the chart can read a shipped or pipelines.files pipeline, not one of pipelines.configMap).
    if not V["pipelines"]["configMap"]:
        text = V["pipelines"]["files"].get(inf["pipeline"]) or chart_files.get(inf["pipeline"]) or ""
        declared = (yaml.safe_load(text) or {}).get("vars") or {}
        F.check({"consumer_index", "consumers"} <= set(declared), f"consumers: pipeline {inf['pipeline']} does not declare consumer_index and consumers")
    # No cluster: no hostfile, cluster secret, cluster port, or NetworkPolicy rule for one.
    for name in ("DFP_PROCESSES", "DFP_PROCESS", "DFP_HOSTFILE", "DFP_CLUSTER_SECRET_FILE"):
        F.check(name not in env, f"consumers: {name} is set, but consumers are no cluster")
    F.check(not hostfiles, "consumers: a hostfile ConfigMap is rendered")
    F.check("--connect-timeout" not in args, "consumers: --connect-timeout is passed, but consumers connect to no peer")
    F.check("cluster" not in ports, "consumers: the container has a cluster port")
    F.check(not any(m["mountPath"] in ("/etc/dfp/cluster",) for m in dfp.get("volumeMounts") or []), "consumers: the hostfile folder is mounted")
    if svc:
        F.check(not any(p["name"] == "cluster" for p in svc["spec"]["ports"]), "consumers: the inference Service has a cluster port")
    for p in policies:
        for r in p["spec"].get("ingress") or []:
            F.check(not any(x.get("port") in (inf["cluster"]["port"], "cluster") for x in r.get("ports") or []),
                    "consumers: the NetworkPolicy opens the cluster port")
    secrets = json.dumps(sts["spec"]["template"]["spec"].get("volumes") or [])
    F.check('"cluster/secret"' not in secrets, "consumers: the cluster secret is mounted")


def check_training(objs, V: dict) -> None:
    t = V["training"]
    cron = find(objs, "CronJob")
    if not t["enabled"]:
        F.check(not cron, "training.enabled is false but a CronJob is rendered")
        return
    if not F.check(len(cron) == 1, f"expected one CronJob, found {len(cron)}"):
        return
    cj = cron[0]
    F.check(cj["spec"]["concurrencyPolicy"] == "Forbid", "training: concurrencyPolicy is not Forbid")
    F.check(cj["spec"]["schedule"] == t["schedule"], "training: schedule is not training.schedule")
    c = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    F.check(args[:2] == ["retrain", f"/etc/dfp/pipelines/{t['pipeline']}"], f"training args start {args[:2]}, not retrain + the pipeline")
    F.check(arg_after(args, "--registry") == V["registry"]["location"], "training: --registry is not registry.location")
    F.check(float(arg_after(args, "--window-days") or "nan") == float(t["windowDays"]), "training: --window-days is not training.windowDays")
    F.check(float(arg_after(args, "--holdout-days") or "nan") == float(t["holdoutDays"]), "training: --holdout-days is not training.holdoutDays")
    F.check(("--dry-run" in args) == bool(t["dryRun"]), "training: --dry-run does not follow training.dryRun")
    if t["input"]:
        F.check(var_args(args).get("input") == t["input"], "training: --var input is not training.input")
    for reserved in ("models", "start", "end", "warm_start", "holdout_from", "dry_run", "report"):
        F.check(reserved not in var_args(args), f"training: --var {reserved} is passed, but dfp retrain sets it")


def check_console(objs, V: dict) -> None:
    c = V["console"]
    deps = [d for d in find(objs, "Deployment") if component(d) == "console"]
    if not c["enabled"]:
        F.check(not deps, "console.enabled is false but a console Deployment is rendered")
        return
    if not F.check(len(deps) == 1, f"expected one console Deployment, found {len(deps)}"):
        return
    d = deps[0]
    spec = d["spec"]["template"]["spec"]
    con = spec["containers"][0]
    args = con["args"]
    F.check(args[0] == "serve", "console: does not run dfp serve")
    F.check(arg_after(args, "--addr") == f"0.0.0.0:{c['port']}", "console: --addr is not 0.0.0.0:console.port")
    store = arg_after(args, "--store") or ""
    m, v = mount_for(con, spec, store)
    F.check(bool(m) and get(v, "persistentVolumeClaim.claimName") == V["inference"]["store"]["existingClaim"],
            "console: --store is not on inference.store.existingClaim")
    token = arg_after(args, "--token-file") or ""
    m, v = mount_for(con, spec, token)
    F.check(bool(m) and secret_item(v, token[len(m["mountPath"]) + 1:]) == (c["tokenSecret"]["name"], c["tokenSecret"]["key"]),
            "console: --token-file is not console.tokenSecret's key")
    for probe in ("livenessProbe", "readinessProbe"):
        F.check(get(con, f"{probe}.httpGet.path") == "/healthz", f"console: {probe} is not on /healthz (the one path open without the token)")
    svcs = [s for s in find(objs, "Service") if component(s) == "console"]
    F.check(len(svcs) == 1 and subset(svcs[0]["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]), "console: no Service selecting it")
    if c["colocateWithWriter"] and not c["affinity"] and V["inference"]["enabled"]:
        terms = get(spec, "affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution") or []
        F.check(any(get(t, "labelSelector.matchLabels") == {"statefulset.kubernetes.io/pod-name": f"{RELEASE}-dfp-inference-0"} for t in terms),
                "console: not scheduled next to inference process 0, the store's writer")
    inf = [o for o in find(objs, "StatefulSet") + find(objs, "Deployment") if component(o) == "inference"]
    for w in inf:
        ic = w["spec"]["template"]["spec"]["containers"][0]
        vars_ = var_args(ic["args"])
        F.check(vars_.get("write_store") == "true" and vars_.get("store") == store, "console: the inference pipeline does not write the store the console reads")


def check_monitoring(objs, V: dict) -> None:
    m = V["monitoring"]
    sms, pms = find(objs, "ServiceMonitor"), find(objs, "PodMonitor")
    F.check(bool(sms) == bool(m["serviceMonitor"]["enabled"] and V["inference"]["enabled"]), "ServiceMonitor rendered iff monitoring.serviceMonitor.enabled")
    F.check(bool(pms) == bool(m["podMonitor"]["enabled"]), "PodMonitor rendered iff monitoring.podMonitor.enabled")
    token = V["admin"]["tokenSecret"]
    for sm in sms:
        svcs = [s for s in find(objs, "Service") if subset(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels") or {})]
        F.check(len(svcs) == 1 and component(svcs[0]) == "inference", f"ServiceMonitor selects {[s['metadata']['name'] for s in svcs]}, not the inference Service alone")
        for ep in sm["spec"]["endpoints"]:
            F.check(all(any(p.get("name") == ep["port"] for p in s["spec"]["ports"]) for s in svcs), f"ServiceMonitor port {ep['port']} is not a port of the Service")
            if token["name"]:
                F.check(ep.get("authorization", {}).get("credentials") == {"name": token["name"], "key": token["key"]}, "ServiceMonitor: no bearer token from admin.tokenSecret")
    for pm in pms:
        pods = [w["spec"]["template"] for w in find(objs, "StatefulSet") + find(objs, "Deployment") + [c["spec"]["jobTemplate"] for c in find(objs, "CronJob")]
                if component(w) in ("inference", "training")]
        selected = [p for p in pods if subset(pm["spec"]["selector"].get("matchLabels"), p["metadata"]["labels"])
                    and all(p["metadata"]["labels"].get(e["key"]) in e.get("values", []) for e in pm["spec"]["selector"].get("matchExpressions") or [])]
        F.check(bool(selected) or not pods, "PodMonitor selects no inference or training pods")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            for p in selected:
                F.check(any(port.get("name") == ep["port"] for c in p["spec"]["containers"] for port in c.get("ports") or []),
                        f"PodMonitor port {ep['port']} is not a container port of the pods it selects")
            if token["name"]:
                F.check(ep.get("authorization", {}).get("credentials") == {"name": token["name"], "key": token["key"]}, "PodMonitor: no bearer token from admin.tokenSecret")
    dash = [c for c in find(objs, "ConfigMap") if "dfp-dashboard.json" in (c.get("data") or {})]
    F.check(bool(dash) == bool(m["grafanaDashboard"]["enabled"]), "dashboard ConfigMap rendered iff monitoring.grafanaDashboard.enabled")
    for c in dash:
        F.check(c["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap lacks the grafana_dashboard: \"1\" label")
        text = c["data"]["dfp-dashboard.json"]
        expected = (ROOT / "deploy/grafana/dfp-dashboard.json").read_text()
        if m["grafanaDashboard"]["datasourceUid"]:
            expected = expected.replace("${DS_PROMETHEUS}", m["grafanaDashboard"]["datasourceUid"])
        try:
            F.check(json.loads(text) == json.loads(expected), "dashboard ConfigMap differs from deploy/grafana/dfp-dashboard.json")
        except json.JSONDecodeError as e:
            F.add(f"dashboard ConfigMap is not JSON: {e}")


def check_credentials(objs, manifests: dict[str, str], raw_values: dict, V: dict) -> None:
    F.check(not find(objs, "Secret"), "the chart renders a Secret: credentials must come from existing Secrets only")
    text = "\n".join(manifests.values())
    for fake in FAKE_SECRETS:
        F.check(fake not in text, f"the render contains the test secret {fake!r}")
    for cm in find(objs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            for fake in FAKE_SECRETS:
                F.check(fake not in value, f"ConfigMap {cm['metadata']['name']}/{key} holds the secret {fake!r}")
    # Every Secret the values file names is used by something rendered.
    used: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                used.add(node["secretKeyRef"]["name"])
            if "secretName" in node:
                used.add(node["secretName"])
            if "credentials" in node and isinstance(node["credentials"], dict):
                used.add(node["credentials"].get("name"))
            if "secret" in node and isinstance(node["secret"], dict) and "name" in node["secret"]:
                used.add(node["secret"]["name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for _, o in objs:
        walk(o)
    named: list[tuple[str, str]] = []

    def secrets_named(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                p = f"{path}.{k}" if path else k
                if (k.endswith("Secret") or p == "inference.cluster.secret") and isinstance(v, dict) and v.get("name"):
                    named.append((p, v["name"]))
                secrets_named(v, p)

    secrets_named(raw_values)
    for path, name in named:
        F.check(name in used, f"values name Secret {name!r} ({path}) but nothing rendered uses it")


def check_pipeline_configmap(objs, V: dict, chart_files: dict[str, str]) -> None:
    own = V["pipelines"]["configMap"]
    cms = find(objs, "ConfigMap", f"{RELEASE}-dfp-pipelines")
    if own:
        F.check(not cms, "pipelines.configMap is set but the chart renders its own pipelines ConfigMap")
        return
    if not F.check(len(cms) == 1, "no pipelines ConfigMap"):
        return
    data = cms[0]["data"]
    extra = V["pipelines"]["files"]
    F.check(set(data) == set(chart_files) | set(extra), f"pipelines ConfigMap keys {sorted(data)} are not the chart's pipelines plus pipelines.files")
    for name, text in chart_files.items():
        if name not in extra:
            F.check(data.get(name) == text, f"pipelines ConfigMap: {name} differs from the chart's pipelines/{name}")
    for name, text in extra.items():
        F.check(data.get(name, "").rstrip("\n") == text.rstrip("\n"), f"pipelines ConfigMap: {name} differs from pipelines.files")


# ------------------------------------------------------------------------------------ chart-wide checks

def check_chart_files(chart) -> dict[str, str]:
    F.context = "chart"
    repo = {p.name: p.read_text() for p in sorted((ROOT / "pipelines").glob("*.yaml"))}
    ours = {p.name: p.read_text() for p in sorted((CHART / "pipelines").glob("*.yaml"))}
    for name in sorted(set(repo) - set(ours)):
        F.add(f"pipelines/{name} is not in the chart: cp pipelines/{name} deploy/helm/dfp/pipelines/")
    for name in sorted(set(ours) - set(repo)):
        F.add(f"deploy/helm/dfp/pipelines/{name} is no longer in pipelines/: remove it from the chart")
    for name in sorted(set(repo) & set(ours)):
        F.check(repo[name] == ours[name], f"deploy/helm/dfp/pipelines/{name} differs from pipelines/{name}: cp pipelines/{name} deploy/helm/dfp/pipelines/")
    F.check((CHART / "dashboards/dfp-dashboard.json").read_text() == (ROOT / "deploy/grafana/dfp-dashboard.json").read_text(),
            "deploy/helm/dfp/dashboards/dfp-dashboard.json differs from deploy/grafana/dfp-dashboard.json: copy it again")
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    F.check(str(chart.metadata.get("appVersion")) == version, f"Chart.yaml appVersion {chart.metadata.get('appVersion')} is not the workspace version {version}")
    F.check(chart.metadata.get("apiVersion") == "v2", "Chart.yaml apiVersion is not v2")
    schema = chart.schema
    F.check(bool(schema) and schema.get("$schema", "").startswith("http://json-schema.org/draft-07/schema"), "values.schema.json is not a draft-07 schema")
    if schema:
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            F.add(f"values.schema.json is not a valid draft-07 schema: {e.message}")
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(chart.values))
        F.check(not errors, f"the chart's own values.yaml fails its schema: {[e.message for e in errors]}")
    # Every key of values.yaml is documented in the chart README.
    readme = (CHART / "README.md").read_text()

    def leaves(node, path=""):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{path}.{k}" if path else k)
        else:
            yield path

    # Sections of the chart's own settings list each key; Kubernetes objects passed through (security
    # contexts) may be listed whole.
    passthrough = {"podSecurityContext", "containerSecurityContext"}
    sections = {k for k, v in chart.values.items() if isinstance(v, dict) and k not in passthrough}
    for key in leaves(chart.values):
        parts = key.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        F.check(any(f"`{p}`" in readme for p in prefixes if p not in sections or p == key),
                f"values key {key} is not listed in deploy/helm/dfp/README.md")
    F.context = ""
    return ours


# Wrong values: each must be refused, with a message that says what is wrong.
def bad_cases() -> list[tuple[str, dict, str]]:
    base = {"registry": {"location": "mlflow://mlflow:5000"}, "kafka": {"brokers": "kafka:9092"}, "training": {"input": "s3://logs/azure/"}}

    def with_(**over) -> dict:
        v = json.loads(json.dumps(base))
        for dotted, value in over.items():
            node = v
            parts = dotted.split("__")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return v

    return [
        ("replicas: 0", with_(inference__replicas=0), "at '/inference/replicas': minimum: got 0, want 1"),
        ("an unknown key", with_(inference__replica=3), "additional properties 'replica' not allowed"),
        ("a misspelt top-level section", with_(kafak={"brokers": "x:1"}), "additional properties 'kafak' not allowed"),
        ("an inline Kafka password", with_(kafka__sasl={"password": FAKE_SECRETS[0]}), "at '/kafka/sasl': additional properties 'password' not allowed"),
        ("inline S3 keys", with_(s3__accessKeyId=FAKE_SECRETS[1], s3__secretAccessKey=FAKE_SECRETS[2]), "additional properties"),
        ("a password as a pipeline variable", with_(inference__vars={"es_password": FAKE_SECRETS[4]}), "invalid propertyName 'es_password'"),
        ("a token as a training variable", with_(training__vars={"mlflow_token": FAKE_SECRETS[3]}), "invalid propertyName 'mlflow_token'"),
        ("a literal credential in extraEnv", with_(inference__extraEnv=[{"name": "MLFLOW_TRACKING_TOKEN", "value": FAKE_SECRETS[3]}]),
         "at '/inference/extraEnv/0': missing property 'valueFrom'"),
        ("a literal secret in training extraEnv", with_(training__extraEnv=[{"name": "ES_PASSWORD", "value": FAKE_SECRETS[4]}]), "missing property 'valueFrom'"),
        ("a token flag in extraArgs", with_(inference__extraArgs=[f"--token={FAKE_SECRETS[5]}"]), "at '/inference/extraArgs/0'"),
        ("a Secret given as a string", with_(admin__tokenSecret=FAKE_SECRETS[5]), "at '/admin/tokenSecret': got string, want object"),
        ("a Secret name that is no Kubernetes name", with_(admin__tokenSecret={"name": "Admin Token", "key": "token"}), "at '/admin/tokenSecret/name'"),
        ("replicas as a string", with_(inference__replicas="3"), "got string, want integer"),
        ("an unknown mode", with_(inference__mode="pool"), "at '/inference/mode'"),
        ("brokers without a port", with_(kafka__brokers="kafka"), "at '/kafka/brokers'"),
        ("a relative registry directory", with_(registry__location="./models"), "at '/registry/location'"),
        ("no registry", with_(registry__location=""), "registry.location is required"),
        ("no brokers for the Kafka pipeline", with_(kafka__brokers=""), "kafka.brokers is required"),
        ("no training input", with_(training__input=""), "training.input is required"),
        ("a cluster of 3 without its secret", with_(inference__replicas=3), "inference.cluster.secret.name is required"),
        ("consumers with a shipped pipeline without the share variables",
         with_(inference__mode="consumers", inference__pipeline="azure-inference.yaml", kafka__brokers=""),
         "pipeline azure-inference.yaml does not declare the variable(s) consumer_index, consumers"),
        ("consumers with a pipelines.files pipeline lacking consumer_index",
         with_(inference__mode="consumers", inference__replicas=3, inference__pipeline="mine.yaml",
               pipelines__files={"mine.yaml": "version: 1\nvars:\n  brokers: x:1\n  models: m\n  consumers: 1\nstages: {}\n"}),
         "pipeline mine.yaml does not declare the variable(s) consumer_index"),
        ("consumers with consumer_index set by hand", with_(inference__mode="consumers", inference__replicas=3, inference__vars={"consumer_index": 1}),
         "inference.vars.consumer_index: in mode consumers the chart sets consumer_index itself"),
        ("consumers with the count set by hand", with_(inference__mode="consumers", inference__vars={"consumers": 2}), "the chart sets consumers itself"),
        ("3 consumers sharing the alert store", with_(inference__mode="consumers", inference__replicas=3, inference__store={"enabled": True, "existingClaim": "s"}),
         "inference.store with inference.mode consumers and more than one replica"),
        ("a bad consumers update strategy", with_(inference__consumers__updateStrategy={"type": "Recreate"}), "at '/inference/consumers/updateStrategy/type'"),
        ("the console without a token", with_(console__enabled=True, inference__store={"enabled": True, "existingClaim": "s"}), "console.tokenSecret.name is required"),
        ("the console without the store", with_(console__enabled=True, console__tokenSecret={"name": "c", "key": "token"}), "needs inference.store.enabled"),
        ("the store without a claim", with_(inference__store={"enabled": True}), "inference.store.existingClaim is required"),
        ("Elasticsearch for a pipeline without it", with_(elasticsearch__url="https://es:9200"), 'declares no variable "es_url"'),
        ("an undeclared pipeline variable", with_(inference__vars={"thresold": 3}), 'declares no variable "thresold"'),
        ("a variable dfp retrain sets", with_(training__vars={"start": "2020-01-01"}), "dfp retrain sets start itself"),
        ("a pipeline the chart does not have", with_(inference__pipeline="nope.yaml"), 'pipeline "nope.yaml" is not in the chart'),
        ("holdout not shorter than the window", with_(training__windowDays=2, training__holdoutDays=2), "must be less than training.windowDays"),
        ("a zero holdout", with_(training__holdoutDays=0), "at '/training/holdoutDays'"),
        ("a directory registry without a volume", with_(registry__location="/models"), "mount it with registry.volume.existingClaim"),
        ("plugins from an image and a volume", with_(plugins__image={"repository": "p"}, plugins__volume={"emptyDir": {}}), "not both"),
        ("a literal password in a pipeline of pipelines.files",
         with_(pipelines__files={"mine.yaml": "version: 1\nstages:\n  logs:\n    properties:\n      sasl.password: " + FAKE_SECRETS[0] + "\n"}),
         "pipelines.files.mine.yaml: sasl.password holds a literal value"),
        ("a bad update strategy", with_(inference__cluster__updateStrategy={"type": "Rolling"}), "at '/inference/cluster/updateStrategy/type'"),
    ]


@contextlib.contextmanager
def quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_bad_values(chart) -> int:
    F.context = "wrong values"
    for what, values, expected in bad_cases():
        try:
            with quiet_stderr():  # Helm's Go side warns on stderr when a value replaces a table (a Secret as text)
                render(chart, values)
        except helm_python.HelmError as e:
            message = str(e)
            F.check(expected in message, f"{what}: refused, but the message does not say {expected!r}:\n{message}")
            for fake in FAKE_SECRETS:
                F.check(fake not in message, f"{what}: the error message repeats the secret value {fake!r}")
        else:
            F.add(f"{what}: accepted, must be refused ({json.dumps(values)})")
    F.context = ""
    return len(bad_cases())


# ------------------------------------------------------------------------------------------------ main

def check_render(chart, raw: dict, chart_files: dict[str, str]):
    """Renders the chart with `raw` values and runs every check on the objects: (objects, merged values,
    how many validated), or None when it does not render (recorded as a failure)."""
    try:
        manifests = render(chart, raw)
    except helm_python.HelmError as e:
        F.add(f"does not render: {e}")
        return None
    objs = objects_of(manifests)
    V = chart.merge_values(raw)
    validated = validate_objects(objs)
    check_pods(objs, V)
    check_inference(objs, V, chart_files)
    check_training(objs, V)
    check_console(objs, V)
    check_monitoring(objs, V)
    check_credentials(objs, manifests, raw, V)
    check_pipeline_configmap(objs, V, chart_files)
    return objs, V, validated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="write the snapshots again instead of comparing")
    opts = parser.parse_args()

    chart = helm_python.Chart.load(str(CHART))
    chart_files = check_chart_files(chart)
    dashboard = (CHART / "dashboards/dfp-dashboard.json").read_text()
    values_files = sorted(VALUES_DIR.glob("*.yaml"))
    if not values_files:
        F.add(f"no values files in {VALUES_DIR}")
    names = {p.stem for p in values_files}
    for snap in sorted(SNAPSHOTS.glob("*.yaml")):
        if snap.stem not in names:
            if opts.update:
                snap.unlink()
            else:
                F.add(f"snapshot {snap.relative_to(ROOT)} has no values file (run with --update to remove it)")

    lint = helm_python.lint(str(CHART), yaml.safe_load((VALUES_DIR / "default.yaml").read_text()), strict=True, namespace=NAMESPACE)
    for msg in lint.get("messages") or []:
        if msg.get("severity", 0) >= 2:
            F.add(f"helm lint --strict: {msg.get('path')}: {msg.get('error')}")
    for err in lint.get("errors") or []:
        F.add(f"helm lint: {err}")

    for path in values_files:
        F.context = f"values {path.name}"
        raw = yaml.safe_load(path.read_text()) or {}
        checked = check_render(chart, raw, chart_files)
        if checked is None:
            continue
        objs, V, validated = checked
        snap = SNAPSHOTS / f"{path.stem}.yaml"
        text = snapshot_text(objs, chart_files, dashboard, V)
        if opts.update:
            SNAPSHOTS.mkdir(parents=True, exist_ok=True)
            snap.write_text(text)
        elif not snap.exists():
            F.add(f"no snapshot {snap.relative_to(ROOT)} (run tests/helm/check.py --update, review and commit it)")
        elif snap.read_text() != text:
            diff = list(difflib.unified_diff(snap.read_text().splitlines(), text.splitlines(), str(snap.relative_to(ROOT)), "rendered", lineterm=""))
            shown = "\n".join(diff[:80]) + (f"\n… {len(diff) - 80} more diff lines" if len(diff) > 80 else "")
            F.add(f"the render differs from {snap.relative_to(ROOT)} (if intended: tests/helm/check.py --update):\n{shown}")
        kinds: dict[str, int] = {}
        for _, o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        print(f"{path.name}: {len(objs)} objects ({summary}); {validated} validated (Kubernetes {' and '.join(KUBE_VERSIONS)}, strict)")
    # The production example of docs/deploy.md renders and passes the same checks (no snapshot): the
    # guide's values must stay valid as the chart changes.
    F.context = "docs/deploy.md (values-prod.yaml)"
    guide = (ROOT / "docs/deploy.md").read_text()
    example = re.search(r"```yaml\n(# values-prod\.yaml\n.*?)```", guide, re.S)
    if not example:
        F.add("the values-prod.yaml example is missing")
    else:
        checked = check_render(chart, yaml.safe_load(example.group(1)) or {}, chart_files)
        if checked is not None:
            objs, _, validated = checked
            print(f"docs/deploy.md values-prod.yaml: {len(objs)} objects; {validated} validated")
    F.context = ""

    n = check_bad_values(chart)
    print(f"wrong values: {n} cases, each refused with its message")
    if F.items:
        print(f"\n{len(F.items)} failure(s):", file=sys.stderr)
        for item in F.items:
            print(f"- {item}", file=sys.stderr)
        return 1
    print("helm chart: all checks passed" + (" (snapshots written)" if opts.update else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
