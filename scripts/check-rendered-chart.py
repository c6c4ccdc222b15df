"""Facts about the rendered chart, for scripts/check-deploy (the rendering itself is validated
against the Kubernetes and Gateway API schemas there; tests/tests/deploy.rs checks the chart
against a running gateway).

    python check-rendered-chart.py VALUE_SET RENDERED.yaml

VALUE_SET is `defaults` or the name of a ci/ values file without `-values.yaml`. Every value set
gets the common checks; some get their own. Prints one line per failed fact and exits 1.
"""

import sys

import yaml

value_set, path = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    objs = [o for o in yaml.safe_load_all(f) if o]
failures = []
held = 0


def check(ok, fact):
    global held
    if ok:
        held += 1
    else:
        failures.append(fact)


def all_of(kind):
    return [o for o in objs if o["kind"] == kind]


def one(kind, hook=None):
    found = [
        o
        for o in all_of(kind)
        if hook is None
        or (("helm.sh/hook" in (o["metadata"].get("annotations") or {})) == hook)
    ]
    assert len(found) == 1, f"{value_set}: expected one {kind}, found {len(found)}"
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


deploy = one("Deployment")
job = one("Job")
gateway_cm = next(c for c in all_of("ConfigMap") if "PORT" in c.get("data", {}))
service = one("Service")
pod = deploy["spec"]["template"]
container = pod["spec"]["containers"][0]
job_pod = job["spec"]["template"]
job_container = job_pod["spec"]["containers"][0]
env = {e["name"]: e for e in container.get("env", [])}
job_env = {e["name"]: e for e in job_container.get("env", [])}
cm = gateway_cm["data"]
internal_port = cm.get("INTERNAL_PORT")

# The migration Job's pods are selected by nothing of the gateway's; the gateway's pods are.
job_labels = job_pod["metadata"]["labels"]
check(job_labels.get("app.kubernetes.io/component") == "migration", "Job pods carry component: migration")
selectors = {
    "Deployment": deploy["spec"]["selector"]["matchLabels"],
    "Service": service["spec"]["selector"],
}
for kind in ("PodDisruptionBudget", "NetworkPolicy"):
    for o in all_of(kind):
        key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
        selectors[kind] = o["spec"][key]["matchLabels"]
for spread in pod["spec"].get("topologySpreadConstraints", []):
    selectors["topologySpread"] = spread["labelSelector"]["matchLabels"]
for kind, sel in selectors.items():
    check(matches(sel, pod["metadata"]["labels"]), f"the {kind} selector selects the gateway pods")
    check(not matches(sel, job_labels), f"the {kind} selector does not select the migration Job's pods")
    check(sel.get("app.kubernetes.io/component") == "gateway", f"the {kind} selector names component: gateway")
check(deploy["spec"].get("minReadySeconds", 0) > 0, "the Deployment sets minReadySeconds")

# Secrets only ever from a Secret; extraEnv in the containers, not in the ConfigMap.
secret_like = ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL", "REDIS_URL", "ACCESS_KEY", "USERNAME")
check(not any(s in k for k in cm for s in secret_like), f"no secret-bearing key in the ConfigMap: {sorted(cm)}")
for name, e in env.items():
    if any(s in name for s in secret_like):
        check("valueFrom" in e, f"{name} comes from a Secret, not a literal")
sources = [s for s in container.get("envFrom", [])]
check(sources and "configMapRef" in sources[-1], "the chart's ConfigMap is the last envFrom source (its keys win)")

# Ports: health, metrics and the internal API follow config.internalPort.
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
svc_ports = {p["name"]: p for p in service["spec"]["ports"]}
probe_port = "internal" if internal_port else "http"
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    check(container[probe]["httpGet"]["port"] == probe_port, f"{probe} uses port {probe_port}")
for sm in all_of("ServiceMonitor"):
    check(sm["spec"]["endpoints"][0]["port"] == probe_port, f"the ServiceMonitor scrapes port {probe_port}")
check(svc_ports["http"]["targetPort"] == "http", "the Service's http port targets the public port")
for ing in all_of("Ingress"):
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            check(p["backend"]["service"]["port"] == {"name": "http"}, "the Ingress only reaches the public port")
    a = ing["metadata"]["annotations"]
    check("http_503" in a.get("nginx.ingress.kubernetes.io/proxy-next-upstream", ""), "ingress-nginx retries a 503 handshake")
for route in all_of("HTTPRoute"):
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            check(ref["port"] == svc_ports["http"]["port"], "the HTTPRoute only reaches the public Service port")
if internal_port:
    check(ports.get("internal") == int(internal_port), "container port internal = INTERNAL_PORT")
    check(ports["http"] != ports["internal"], "the public and internal ports differ")
    check(svc_ports.get("internal", {}).get("targetPort") == "internal", "the Service exposes port internal")
else:
    check("internal" not in ports and "internal" not in svc_ports, "no internal port without config.internalPort")

# The NetworkPolicy: the public port from the ingress controller, the internal port from the
# backend, monitoring and the gateway's own pods only.
for np in all_of("NetworkPolicy"):
    rules = {r["ports"][0]["port"]: r["from"] for r in np["spec"]["ingress"]}
    if internal_port:
        public = [p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") for p in rules["http"]]
        internal = [p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") for p in rules["internal"]]
        check("ingress-nginx" in public and "monitoring" not in public, f"public port peers: {public}")
        check("ingress-nginx" not in internal and "monitoring" in internal and "vizora" in internal, f"internal port peers: {internal}")
        check({} not in [p.get("podSelector") for p in rules["internal"]], "no all-pods peer on the internal port")
    if np["spec"].get("egress"):
        egress_ports = {p["port"] for r in np["spec"]["egress"] for p in r.get("ports", [])}
        # A Redis Cluster has no Sentinels: its nodes' client port is enough.
        need = {53, 6379, 5432} if cm.get("REDIS_CLUSTER_NODES") else {53, 6379, 26379, 5432}
        check(need <= egress_ports, f"egress covers DNS, Redis (and Sentinel), PostgreSQL: {egress_ports}")

# The migration Job takes extraEnv, extraEnvFrom, the extra volumes and a service account.
check(job_pod["spec"].get("serviceAccountName"), "the Job names a service account")
for name in env:
    if name not in ("REPLICA_ID",):
        check(name in job_env, f"the Job gets {name} too")
check(
    [s for s in container.get("envFrom", []) if "configMapRef" not in s] == job_container.get("envFrom", []),
    "the Job gets the same extraEnvFrom",
)
check(pod["spec"]["volumes"][2:] == job_pod["spec"].get("volumes", []), "the Job gets the same extra volumes")
check(container["volumeMounts"][2:] == job_container.get("volumeMounts", []), "the Job gets the same extra mounts")

secret_refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
redis_creds = ["REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD"]
if cm.get("REDIS_SENTINELS"):
    check("REDIS_URL" not in env, "no REDIS_URL with Sentinel")
    check("REDIS_CLUSTER_NODES" not in cm, "not both Sentinel and Redis Cluster")
    for n in redis_creds:
        check(n in secret_refs and n in job_env, f"{n} from the Secret in both workloads")
elif cm.get("REDIS_CLUSTER_NODES"):
    check("REDIS_URL" not in env and "REDIS_URL" not in job_env, "no REDIS_URL with Redis Cluster")
    check(cm.get("REDIS_CLUSTER_TLS") in ("false", "true", "insecure"), f"REDIS_CLUSTER_TLS={cm.get('REDIS_CLUSTER_TLS')}")
    for n in redis_creds[:2]:
        check(n in secret_refs and n in job_env, f"{n} from the Secret in both workloads")
    check(not any(n in env for n in redis_creds[2:]), "no Sentinel credentials with Redis Cluster")
    for secret in all_of("Secret"):
        check("REDIS_URL" not in secret["data"], f"{secret['metadata']['name']} holds no REDIS_URL")
else:
    check(not any(n in env for n in redis_creds), "no Sentinel credentials without Sentinel")

if value_set == "defaults":
    check(cm["MAX_CONNECTIONS"] == "20000", "MAX_CONNECTIONS defaults to 20000 (fits 1Gi)")
    check(container["resources"]["limits"]["memory"] == "1Gi", "1Gi memory limit by default")
if value_set == "production":
    pdb = one("PodDisruptionBudget")["spec"]
    check("minAvailable" not in pdb and pdb.get("maxUnavailable") == 1, "production PDB: maxUnavailable 1")
    check(pdb.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", "production PDB: AlwaysAllow")
    check("@sha256:" in container["image"] and container["image"] == job_container["image"], "image pinned by digest")
if value_set == "sentinel-existing-secret":
    check(not all_of("Secret"), "nothing secret rendered with existingSecret")
    for n in redis_creds:
        check(secret_refs.get(n, {}).get("name") == "vizora-gateway-secrets", f"{n} from the existing Secret")
        check(secret_refs.get(n, {}).get("optional") is True, f"{n} optional in the existing Secret")
if value_set == "sentinel-chart-secret":
    for secret in all_of("Secret"):
        keys = set(secret["data"])
        check(set(redis_creds) <= keys and "REDIS_URL" not in keys, f"{secret['metadata']['name']} keys: {sorted(keys)}")
if value_set == "redis-cluster":
    check(cm.get("REDIS_CLUSTER_TLS") == "true", "TLS to the cluster's nodes")
    for n in redis_creds[:2]:
        check(secret_refs.get(n, {}).get("name") == "vizora-gateway-secrets", f"{n} from the existing Secret")
if value_set == "ca-volume":
    for c, p in ((container, pod), (job_container, job_pod)):
        check(any(v.get("configMap", {}).get("name") == "corp-ca-bundle" for v in p["spec"]["volumes"]), "CA volume")
        check(any(m["mountPath"] == "/etc/vizora/ca" for m in c["volumeMounts"]), "CA mount")
        e = {x["name"]: x for x in c["env"]}
        check(e.get("SSL_CERT_FILE", {}).get("value") == "/etc/vizora/ca/ca-bundle.crt", "SSL_CERT_FILE set")
        check(e["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-app-credentials", "extraEnv valueFrom replaces the chart's DATABASE_URL")
        check(sum(1 for x in c["env"] if x["name"] == "DATABASE_URL") == 1, "DATABASE_URL once")
    check("SSL_CERT_FILE" not in cm, "extraEnv not in the ConfigMap")
if value_set.startswith("gateway-api"):
    route = one("HTTPRoute")
    rules = route["spec"]["rules"]
    paths = [m["path"]["value"] for r in rules for m in r["matches"]]
    check(paths[0] == "/socket.io/" and set(paths) <= {"/socket.io/", "/api/"}, f"route paths {paths}")
    check(rules[0]["timeouts"]["request"] == "0s", "no request timeout on /socket.io/")
    check(("sessionPersistence" in rules[0]) == value_set.endswith("session"), "sessionPersistence only when enabled")

for f in failures:
    print(f"{value_set}: {f}", file=sys.stderr)
if not failures:
    print(f"  {value_set}: {held} facts about the rendering hold")
sys.exit(1 if failures else 0)
