"""deploy/: the Kubernetes manifests lint clean, validate strictly (an
unknown field fails) against a pinned Kubernetes API, and agree with the code
and the image they deploy: ports, probe routes, settings, metric names,
shutdown timing, security context, and what kustomize applies. Offline and
independent of the machine's speed."""
from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor
from yamllint import linter
from yamllint.config import YamlLintConfig

from app.config import Settings
from app.main import create_app
from app.metrics import ServiceMetrics
from conftest import ROOT

# The Kubernetes API the manifests are checked against: the oldest minor
# release they promise to work on (a managed cluster's oldest offered one).
KUBERNETES_VERSION = "1.30.0"

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes"                     # kubectl apply -k deploy/kubernetes
CPU_FALLBACK = DEPLOY / "kubernetes-cpu-fallback"  # kubectl apply -k deploy/kubernetes-cpu-fallback
LOCAL = DEPLOY / "kubernetes-local"                # kubectl apply -k deploy/kubernetes-local
PRODUCTION = DEPLOY / "kubernetes-production"      # kubectl apply -k deploy/kubernetes-production
KEDA = DEPLOY / "kubernetes-keda"                  # kubectl apply -k deploy/kubernetes-keda (a CRD: checked by hand)
APPLIED = ["deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"]
NOT_APPLIED = {  # in deploy/kubernetes, deliberately left out of its kustomization.yaml
    "prometheus-adapter-rules.yaml": "configuration of prometheus-adapter, which runs in its own namespace "
                                     "and reads one rules file for every application",
}
SECRET = "digitgen-api-keys"  # created by hand (docs/deploy.md), never committed


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files(folder: Path = DEPLOY) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def manifests() -> list[Path]:
    """Every file of Kubernetes objects (kustomization.yaml is kustomize's own)."""
    return [p for p in yaml_files() if p.name != "kustomization.yaml"
            and p.parent in (BASE, CPU_FALLBACK, LOCAL, PRODUCTION)]


def documents() -> list[tuple[str, int, dict]]:
    return [(str(p.relative_to(ROOT)), i, doc) for p in manifests() for i, doc in enumerate(load(p))]


def one(name: str, kind: str, folder: Path = BASE) -> dict:
    docs = [d for d in load(folder / name) if d.get("kind") == kind]
    assert len(docs) == 1, f"{folder.name}/{name} should hold one {kind}, holds {len(docs)}"
    return docs[0]


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("deployment.yaml", "Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    assert len(pod["containers"]) == 1, f"the pod should run one container, runs {len(pod['containers'])}"
    return pod["containers"][0]


@pytest.fixture(scope="module")
def env(container) -> dict:
    return Env({e["name"]: e for e in container.get("env", [])})


class Env(dict):
    """The container's env by name; a missing one fails saying which."""

    def __missing__(self, name):
        pytest.fail(f"deployment.yaml sets no {name} (it sets {sorted(self)})")


def cpu(quantity) -> Fraction:
    text = str(quantity)
    return Fraction(text[:-1]) / 1000 if text.endswith("m") else Fraction(text)


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def dockerfile_value(pattern: str, what: str) -> str:
    m = re.search(pattern, dockerfile(), re.M)
    assert m, f"the Dockerfile has no {what} (looked for /{pattern}/)"
    return m[1]


# -- lint and schema ---------------------------------------------------------------
def test_yamllint_passes_on_every_file_under_deploy():
    conf = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    files = yaml_files() + [DEPLOY / ".yamllint"]
    assert len(files) > len(APPLIED), f"found only {files} under deploy/"
    problems = [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: [{p.level}] {p.desc} ({p.rule})"
                for path in files for p in linter.run(path.read_text(), conf, str(path))]
    assert not problems, "yamllint (deploy/.yamllint) finds:\n" + "\n".join(problems)


def test_the_pinned_kubernetes_version_is_one_kubernetes_validate_carries():
    carried = [major_minor(v) for v in all_versions()]
    assert major_minor(KUBERNETES_VERSION) in carried, (
        f"kubernetes-validate {kubernetes_validate.__version__} has schemas for Kubernetes {carried[0]} to "
        f"{carried[-1]}, not for the pinned {KUBERNETES_VERSION}: move KUBERNETES_VERSION or bound the package")


def assert_valid(doc: dict, where: str) -> None:
    problem = None
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problem = f"{where} ({doc.get('kind')}) is not a valid Kubernetes {e.version} object: {path}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        problem = f"{where}: {e.message}; deploy/ holds only objects that can be validated"
    if problem:  # outside the except: the message without jsonschema's traceback
        pytest.fail(problem)


@pytest.mark.parametrize("path,index,doc", documents(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_document_validates_strictly_against_the_pinned_kubernetes(path, index, doc):
    assert_valid(doc, f"{path} document {index}")


@pytest.mark.parametrize("breakage", ["port as a word", "unknown field"])
def test_validation_rejects_a_broken_deployment(deployment, breakage):
    """The check above can fail: a wrong type, and a misspelt field (strict mode)."""
    broken = copy.deepcopy(deployment)
    c = broken["spec"]["template"]["spec"]["containers"][0]
    if breakage == "port as a word":
        c["ports"][0]["containerPort"] = "eighty"
    else:
        c["livenessProbes"] = c.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# -- the manifests against the code and the image ------------------------------
def test_one_port_everywhere(container, env, deployment):
    exposed = int(dockerfile_value(r"^EXPOSE\s+(\d+)", "EXPOSE"))
    image_env = int(dockerfile_value(r"DIGITGEN_PORT=(\d+)", "ENV DIGITGEN_PORT"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("http") == exposed, f"containerPort named http is {ports.get('http')!r}, the Dockerfile " \
                                         f"EXPOSEs {exposed}"
    assert image_env == exposed, f"the Dockerfile sets DIGITGEN_PORT={image_env} but EXPOSEs {exposed}"
    assert int(env["DIGITGEN_PORT"]["value"]) == exposed, \
        f"DIGITGEN_PORT in deployment.yaml is {env['DIGITGEN_PORT']['value']}, the Dockerfile EXPOSEs {exposed}"
    assert env["DIGITGEN_HOST"]["value"] == "0.0.0.0", \
        f"DIGITGEN_HOST is {env['DIGITGEN_HOST']['value']!r}: the kubelet and the Service reach the pod's IP"
    scrape = deployment["spec"]["template"]["metadata"]["annotations"]
    assert scrape.get("prometheus.io/scrape") == "true", f"pod annotations {scrape} don't ask for scraping"
    assert int(scrape["prometheus.io/port"]) == exposed, \
        f"prometheus.io/port is {scrape['prometheus.io/port']}, the service listens on {exposed}"
    service = one("service.yaml", "Service")
    for p in service["spec"]["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values(), \
            f"the Service's targetPort {p['targetPort']!r} is none of the container's ports {ports}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values(), f"{probe} asks port {port!r}, the container has {ports}"


def test_probes_and_metrics_answer_without_an_api_key(container, deployment):
    """Asked of the real app (no weights loaded, API keys on): the kubelet
    and Prometheus send no key."""
    app = create_app(Settings(api_keys="a-key", host="0.0.0.0"))  # bound as in the image: any Host name
    probes = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        got = container[probe]["httpGet"]["path"]
        assert got == path, f"{probe} asks {got}, should ask {path} (readiness: weights loaded, not draining)"
    metrics = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]

    async def statuses(paths):
        transport = httpx.ASGITransport(app=app)  # no lifespan: the state before the weights are loaded
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return {p: (await client.get(p)).status_code for p in paths}

    got = asyncio.run(statuses(["/healthz", "/readyz", metrics, "/info"]))
    want = {"/healthz": 200, "/readyz": 503, metrics: 200, "/info": 401}
    assert got == want, (f"GET without a key, before the weights are loaded, answers {got}; the manifests need "
                         f"{want}: liveness up, readiness not yet, metrics open, and keys on for the API")


def settings_variables() -> set[str]:
    """The DIGITGEN_* names Settings.from_env reads, by asking it."""
    read: set[str] = set()

    class Recorder(dict):
        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    Settings.from_env(Recorder())
    assert read, "Settings.from_env read no variable through env.get"
    return read


def test_every_digitgen_variable_is_a_setting_and_its_value_is_accepted(env, container):
    known = settings_variables()
    named = {n for n in env if n.startswith("DIGITGEN_")}
    unknown = named - known
    assert not unknown, f"deployment.yaml sets {sorted(unknown)}, which Settings.from_env never reads " \
                        f"(it reads {sorted(known)})"
    values = {n: e["value"] for n, e in env.items() if n in named and "value" in e}
    values["DIGITGEN_THREADS"] = str(int(cpu(container["resources"]["limits"]["cpu"])))
    settings = Settings.from_env(values)  # raises ConfigError, naming the variable, on a bad value
    assert settings.threads >= 1 and settings.graceful_s > 0, settings
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    keys = Path(env["DIGITGEN_API_KEYS_FILE"]["value"])
    assert Path(settings.api_keys_file) == keys, settings
    assert mounts.get("api-keys", {}).get("mountPath") == str(keys.parent), \
        f"DIGITGEN_API_KEYS_FILE is {keys}, the api-keys volume is mounted at {mounts.get('api-keys')}"


def test_api_keys_come_from_a_required_secret(pod, container):
    volume = {v["name"]: v for v in pod["volumes"]}.get("api-keys", {})
    secret = volume.get("secret", {})
    assert secret.get("secretName") == SECRET, f"the api-keys volume is {volume}, not the Secret {SECRET}"
    assert secret.get("optional") is False, f"Secret volume optional={secret.get('optional')}: a pod without " \
                                            f"keys must fail to start, not serve without keys"
    assert "items" not in secret, "items would rename the Secret's key `keys`, the file DIGITGEN_API_KEYS_FILE names"
    mount = {m["name"]: m for m in container["volumeMounts"]}["api-keys"]
    assert mount.get("readOnly") is True, f"the api-keys mount {mount} is not read-only"
    assert not any(d.get("kind") == "Secret" for _, _, d in documents()), "deploy/ must not hold a Secret"


def test_engine_threads_follow_the_cpu_limit(env, container):
    ref = env["DIGITGEN_THREADS"].get("valueFrom", {}).get("resourceFieldRef", {})
    assert ref.get("resource") == "limits.cpu" and str(ref.get("divisor")) == "1", \
        f"DIGITGEN_THREADS comes from {env['DIGITGEN_THREADS']}, not limits.cpu with divisor 1"
    assert ref.get("containerName", container["name"]) == container["name"], \
        f"DIGITGEN_THREADS reads the limit of container {ref.get('containerName')}, not {container['name']}"
    limit = cpu(container["resources"]["limits"]["cpu"])
    assert limit.denominator == 1, f"limits.cpu {limit} is fractional: the thread count rounds it up, " \
                                   f"more threads than CPU time"
    assert cpu(container["resources"]["requests"]["cpu"]) == limit, \
        f"requests.cpu {container['resources']['requests']['cpu']} != limits.cpu " \
        f"{container['resources']['limits']['cpu']}: the engine's threads should get the CPUs they count on"


def test_termination_grace_covers_prestop_and_the_graceful_period(pod, container, env):
    graceful = float(env["DIGITGEN_GRACEFUL_S"]["value"])
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] in ("/bin/sleep", "sleep") and len(command) == 2, f"preStop {command} is not a sleep"
        sleep = float(command[1])
    assert sleep >= 1, f"preStop sleeps {sleep} s: too little for the endpoint to leave the Service first"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > sleep + graceful, (f"terminationGracePeriodSeconds {grace} <= preStop sleep {sleep} + "
                                      f"DIGITGEN_GRACEFUL_S {graceful}: the kubelet kills before requests finish")
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 60, f"the startupProbe allows {budget} s; start-up measured about 1 s, and a slow, cold " \
                         f"node must pass too (deployment.yaml)"


def test_security_context(pod, container, env):
    uid = int(dockerfile_value(r"useradd .*--uid (\d+)", "useradd --uid"))
    sc = pod["securityContext"]
    want = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}
    for key, value in want.items():
        assert sc.get(key) == value, f"pod securityContext.{key} is {sc.get(key)!r}, want {value!r} " \
                                     f"(the Dockerfile's user is uid {uid})"
    csc = container["securityContext"]
    for key, value in {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}.items():
        assert csc.get(key) is value, f"container securityContext.{key} is {csc.get(key)!r}, want {value}"
    assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"capabilities {csc.get('capabilities')}, want " \
                                                               f"drop ALL"
    assert pod.get("automountServiceAccountToken") is False, "the pod mounts a service account token it never uses"
    assert pod.get("enableServiceLinks") is False, \
        "enableServiceLinks is not false: a Service named digitgen would inject DIGITGEN_PORT=tcp://..."
    tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}.get("/tmp")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert tmp and "emptyDir" in volumes.get(tmp, {}), f"/tmp is {tmp!r}, not an emptyDir: the root fs is read-only"


def test_autoscaling_metrics_are_gauges_the_service_exports(env):
    gauges = {m.name for m in ServiceMetrics().registry.collect() if m.type == "gauge"}
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert targets, f"hpa.yaml scales on no Pods metric: {hpa['spec']['metrics']}"
    assert set(targets) <= gauges, f"hpa.yaml scales on {sorted(set(targets) - gauges)}, which /metrics has no " \
                                   f"gauge of (app/metrics.py gauges: {sorted(gauges)})"
    assert "digitgen_queue_depth" in targets, f"hpa.yaml does not scale on digitgen_queue_depth: {sorted(targets)}"

    adapter = one("prometheus-adapter-rules.yaml", "ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {}
    for rule in rules:
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", rule["seriesQuery"])
        assert m, f"seriesQuery {rule['seriesQuery']!r} is not metric{{labels}}"
        series, labels = m[1], m[2]
        assert series in gauges, f"the adapter rule queries {series}, which /metrics has no gauge of ({sorted(gauges)})"
        for label in ("namespace", "pod"):
            assert f'{label}!=""' in labels, f"the rule for {series} does not require the {label} label"
            assert rule["resources"]["overrides"][label]["resource"] == label, \
                f"the rule for {series} maps {label} to {rule['resources']['overrides'][label]}"
        for part in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert part in rule["metricsQuery"], f"the rule for {series}: metricsQuery lacks {part}"
        served[rule.get("name", {}).get("as") or series] = series
    assert set(targets) <= set(served), f"hpa.yaml scales on {sorted(set(targets) - set(served))}, which no " \
                                        f"adapter rule serves (served: {sorted(served)})"

    settings = Settings.from_env({n: e["value"] for n, e in env.items() if "value" in e})
    for name, target in targets.items():
        assert target["type"] == "AverageValue", f"{name}: target {target}, want AverageValue per pod"
        value = float(target["averageValue"])
        assert 0 < value, f"{name} target {value}"
        if name == "digitgen_inflight_trajectories":
            assert value <= settings.max_batch, f"the HPA targets {value} trajectories in flight a pod, more than " \
                                                f"DIGITGEN_MAX_BATCH {settings.max_batch} can ever be: it never scales"
        if name == "digitgen_queue_depth":
            assert value <= settings.max_queue, f"the HPA targets {value} waiting images a pod, more than " \
                                                f"DIGITGEN_MAX_QUEUE {settings.max_queue} may wait"


def test_objects_select_and_target_the_deployment(deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    name = deployment["metadata"]["name"]
    assert labels.get("app.kubernetes.io/name") == "digitgen", f"pod labels {labels}"
    for file, kind, selector in (("deployment.yaml", "Deployment", lambda o: o["spec"]["selector"]["matchLabels"]),
                                 ("service.yaml", "Service", lambda o: o["spec"]["selector"]),
                                 ("pdb.yaml", "PodDisruptionBudget", lambda o: o["spec"]["selector"]["matchLabels"])):
        sel = selector(one(file, kind))
        assert sel.items() <= labels.items(), f"{file}: the {kind} selects {sel}, the pods are labelled {labels}"
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    cpu_hpa = one("hpa-cpu.yaml", "HorizontalPodAutoscaler", CPU_FALLBACK)
    for h, file in ((hpa, "hpa.yaml"), (cpu_hpa, "hpa-cpu.yaml")):
        ref = h["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", name), f"{file} scales {ref}, not Deployment/{name}"
    assert cpu_hpa["metadata"]["name"] == hpa["metadata"]["name"], \
        f"hpa-cpu.yaml is named {cpu_hpa['metadata']['name']}, so it adds a second HPA instead of patching " \
        f"{hpa['metadata']['name']}"
    assert [m["type"] for m in cpu_hpa["spec"]["metrics"]] == ["Resource"], "hpa-cpu.yaml should scale on CPU alone"
    pdb = one("pdb.yaml", "PodDisruptionBudget")
    floor = min(hpa["spec"]["minReplicas"], deployment["spec"]["replicas"])
    assert pdb["spec"]["minAvailable"] < floor, f"PDB minAvailable {pdb['spec']['minAvailable']} >= {floor} " \
                                                f"replicas: no pod could ever be evicted, drains would hang"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1), f"rollingUpdate {rolling}"


def test_kustomizations_list_every_manifest():
    base = load(BASE / "kustomization.yaml")[0]
    assert base["resources"] == APPLIED, f"deploy/kubernetes/kustomization.yaml applies {base['resources']}, " \
                                         f"this test expects {APPLIED}"
    present = sorted(p.name for p in BASE.glob("*.y*ml") if p.name != "kustomization.yaml")
    assert present == sorted(APPLIED + list(NOT_APPLIED)), \
        f"deploy/kubernetes holds {present}; kustomization.yaml applies {APPLIED} and leaves out {sorted(NOT_APPLIED)}"
    assert not [p for p in BASE.iterdir() if p.is_dir()], "a folder inside deploy/kubernetes: kustomize refuses " \
                                                          "an overlay inside its base"
    overlay = load(CPU_FALLBACK / "kustomization.yaml")[0]
    assert overlay["resources"] == ["../kubernetes"], f"the CPU fallback builds on {overlay['resources']}"
    patches = [p["path"] for p in overlay.get("patches", [])]
    files = sorted(p.name for p in CPU_FALLBACK.glob("*.y*ml") if p.name != "kustomization.yaml")
    assert patches == files == ["hpa-cpu.yaml"], f"the CPU fallback patches with {patches} and holds {files}"


@pytest.mark.parametrize("folder", [BASE, CPU_FALLBACK, LOCAL], ids=lambda p: p.name)
def test_what_kustomize_renders_validates(folder):
    """The real build, where kubectl is installed (it needs no cluster)."""
    if not shutil.which("kubectl"):
        pytest.skip("no kubectl to run `kubectl kustomize` (the checks above read the files themselves)")
    proc = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} fails:\n{proc.stderr[-2000:]}"
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
                           + (["Ingress"] if folder == LOCAL else [])), kinds
    for doc in rendered:
        assert_valid(doc, f"kubectl kustomize {folder.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}")
    hpa = next(d for d in rendered if d["kind"] == "HorizontalPodAutoscaler")
    types = sorted({m["type"] for m in hpa["spec"]["metrics"]})
    assert types == (["Resource"] if folder == CPU_FALLBACK else ["Pods"]), \
        f"kubectl kustomize {folder.name}: the HPA scales on {types}"


# -- Compose (deploy/compose.yaml) and HAProxy ------------------------------------------
def test_compose_runs_replicas_the_settings_accept_behind_the_shared_haproxy_config():
    import ipaddress

    compose = load(DEPLOY / "compose.yaml")[0]
    app, lb = compose["services"]["digitgen"], compose["services"]["lb"]
    env = {k: str(v) for k, v in app["environment"].items()}
    unknown = {n for n in env if n.startswith("DIGITGEN_")} - settings_variables()
    assert not unknown, f"compose.yaml sets {sorted(unknown)}, which Settings.from_env never reads"
    settings = Settings.from_env(env)   # raises ConfigError, naming the variable, on a bad value
    # one engine thread per CPU the container may use (os.cpu_count() sees the host's cores)
    assert settings.threads == int(float(app["deploy"]["resources"]["limits"]["cpus"]))
    # the replicas trust X-Forwarded-For from their own network only, the one HAProxy is on
    subnet = compose["networks"]["digitgen"]["ipam"]["config"][0]["subnet"]
    assert env["DIGITGEN_TRUSTED_PROXIES"] == subnet and ipaddress.ip_network(subnet).is_private
    assert app["networks"] == lb["networks"] == ["digitgen"]
    # HAProxy reads the shared deploy/haproxy/haproxy.cfg and the compose server lines, in that order
    script = " ".join(lb["command"])
    assert "./haproxy:/cfg:ro" in lb["volumes"] and "/cfg/haproxy.cfg /cfg/compose-servers.cfg" in script
    assert lb["environment"]["DIGITGEN_LB_BIND"].endswith(":" + lb["ports"][0].split(":")[1])
    # a replica's stop grace covers the service's graceful period (10 s unless set)
    assert int(app["stop_grace_period"].rstrip("s")) > settings.graceful_s
    # the limits live in the compose file's own Redis, on the replicas' network
    redis = settings.redis_address
    assert redis is not None and redis.host in compose["services"], redis
    assert compose["services"][redis.host]["networks"] == ["digitgen"]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("extra", ["", "compose-servers.cfg"])
def test_the_haproxy_config_is_valid_as_haproxy_checks_it(tmp_path, extra):
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    text += (DEPLOY / "haproxy" / extra).read_text() if extra else "    server r1 127.0.0.1:8001\n"
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    r = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True,
                       env={**os.environ, "DIGITGEN_LB_BIND": "127.0.0.1:8000"})
    assert r.returncode == 0, r.stdout + r.stderr


# -- the small-cluster overlay (deploy/kubernetes-local) --------------------------------
def test_the_local_overlay_fits_a_small_node_and_streams_through_its_ingress(deployment, container):
    import ipaddress

    overlay = load(LOCAL / "kustomization.yaml")[0]
    assert overlay["resources"] == ["../kubernetes", "ingress.yaml"]
    ops = yaml.safe_load(overlay["patches"][0]["patch"])
    assert overlay["patches"][0]["target"] == {"kind": "Deployment", "name": deployment["metadata"]["name"]}
    by_path = {op["path"]: op for op in ops}
    base = "/spec/template/spec/containers/0"
    # the paths it replaces exist in the base (a JSON patch on a missing path fails only at apply time)
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["cpu"]
    assert by_path[base + "/resources/requests/cpu"]["value"] == by_path[base + "/resources/limits/cpu"]["value"] == "1"
    # 1 CPU a pod, 2 pods and the rolling update's third on a 4-CPU laptop's node: 3 CPUs requested
    replicas, surge = deployment["spec"]["replicas"], deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert (replicas + surge) * cpu(by_path[base + "/resources/requests/cpu"]["value"]) <= 3
    trusted = by_path[base + "/env/-"]["value"]
    assert trusted["name"] == "DIGITGEN_TRUSTED_PROXIES" and trusted["name"] in settings_variables()
    assert ipaddress.ip_network(trusted["value"]).is_private
    Settings.from_env({"DIGITGEN_TRUSTED_PROXIES": trusted["value"]})
    ingress = one("ingress.yaml", "Ingress", LOCAL)
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"   # SSE frame by frame
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 120   # a long run's stream
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one("service.yaml", "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]


def json_patches(overlay: dict, kind: str) -> dict[str, dict]:
    """An overlay's JSON-patch operations on the base's object of this kind, by path."""
    ops = [op for p in overlay["patches"] if p.get("target", {}).get("kind") == kind
           for op in yaml.safe_load(p["patch"])]
    assert ops, f"the overlay patches no {kind}"
    return {op["path"]: op for op in ops}


def test_the_production_overlay_shares_limits_trusts_only_its_ingress_and_spreads_its_pods(deployment):
    import ipaddress

    overlay = load(PRODUCTION / "kustomization.yaml")[0]
    assert overlay["resources"] == ["../kubernetes", "ingress.yaml"]
    ops = json_patches(overlay, "Deployment")
    added = {op["value"]["name"]: op["value"] for p in overlay["patches"] if p["target"]["kind"] == "Deployment"
             for op in yaml.safe_load(p["patch"]) if op["path"].endswith("/env/-")}   # several ops share that path
    assert set(added) <= settings_variables(), sorted(set(added) - settings_variables())
    assert added["DIGITGEN_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "digitgen-redis", "key": "url"}
    plain = {n: v["value"] for n, v in added.items() if "value" in v}
    assert ipaddress.ip_network(plain["DIGITGEN_TRUSTED_PROXIES"]).is_private
    settings = Settings.from_env(plain | {"DIGITGEN_REDIS_URL": "redis://:secret@redis:6379/0"})
    assert settings.rate_limit > 0 and settings.key_quota > 0
    base_env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not set(added) & base_env, f"the overlay adds what the base sets already: {set(added) & base_env}"
    spread = ops["/spec/template/spec/topologySpreadConstraints"]["value"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(c["labelSelector"]["matchLabels"].items() <= labels.items() for c in spread)
    # the counts agree: a drain can always evict one pod of the smallest fleet
    replicas = ops["/spec/replicas"]["value"]
    hpa = json_patches(overlay, "HorizontalPodAutoscaler")
    pdb = json_patches(overlay, "PodDisruptionBudget")
    assert hpa["/spec/minReplicas"]["value"] == replicas
    assert pdb["/spec/minAvailable"]["value"] < replicas <= hpa["/spec/maxReplicas"]["value"]
    # the paths it replaces exist in the base (a JSON patch on a missing path fails only at apply time)
    assert "replicas" in deployment["spec"] and "minAvailable" in one("pdb.yaml", "PodDisruptionBudget")["spec"]
    ingress = one("ingress.yaml", "Ingress", PRODUCTION)
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 120
    retry = notes["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    # a refusal (503) is retried, POST included; a 504 is not: that request ran to its deadline
    assert "http_503" in retry and "non_idempotent" in retry and "http_504" not in retry
    assert int(notes["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"]) >= 2
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


def test_the_keda_overlay_scales_on_the_hpas_gauges_with_its_targets_and_replaces_it():
    """KEDA's ScaledObject is a custom resource kubernetes-validate has no
    schema for: its fields are checked here against KEDA's documented ones,
    and its HPA part (what KEDA copies into the HPA it creates) by building
    that HPA and validating it strictly."""
    overlay = load(KEDA / "kustomization.yaml")[0]
    assert overlay["resources"] == ["../kubernetes", "scaledobject.yaml"]
    (deleted,) = [yaml.safe_load(p["patch"]) for p in overlay["patches"]]
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    assert deleted == {"$patch": "delete", "apiVersion": hpa["apiVersion"], "kind": hpa["kind"],
                       "metadata": {"name": hpa["metadata"]["name"]}}
    so = one("scaledobject.yaml", "ScaledObject", KEDA)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert set(spec) <= {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount", "minReplicaCount",
                         "maxReplicaCount", "fallback", "advanced", "triggers", "initialCooldownPeriod"}, sorted(spec)
    assert spec["scaleTargetRef"] == hpa["spec"]["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == hpa["spec"]["behavior"], "scaledobject.yaml's behavior drifted from hpa.yaml's"
    assert_valid({**hpa, "spec": {**hpa["spec"], "behavior": behavior}}, "the HPA KEDA builds")
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    triggers = {}
    for trig in spec["triggers"]:
        assert trig["type"] == "prometheus" and trig.get("metricType") == "AverageValue", trig
        meta = trig["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), f"KEDA's metadata is string to string: {meta}"
        assert {"serverAddress", "query", "threshold"} <= set(meta), meta
        m = re.fullmatch(r"sum\(([a-z_]+)\{[^}]*\}\)", meta["query"])
        assert m, f"query {meta['query']!r} is not sum(metric{{...}}), the sum KEDA averages over the pods"
        triggers[m[1]] = meta["threshold"]
    assert triggers == targets, f"the triggers {triggers} are not the HPA's targets {targets}"
