//! Wiring of the deployment artifacts: the Helm chart rendered by the real helm (installed by
//! scripts/check-deploy into .ci/tools, or `HELM`), checked against the values and against a real
//! gateway binary: grace period vs drain, probe paths and hook commands that exist, HPA/PDB/spread
//! following the values, secret names that line up, alert and dashboard metric names the gateway
//! really exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use vizora_gateway_tests::gateway::gateway_bin;
use vizora_gateway_tests::*;
use vizora_sioclient::connect;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    if let Ok(h) = std::env::var("HELM") {
        return h.into();
    }
    let local = repo().join(".ci/tools/layer/helm/helm");
    assert!(
        local.exists(),
        "no helm at {}: run `bash scripts/check-deploy` (scripts/test does) or set HELM",
        local.display()
    );
    local
}

/// `helm template` of the chart with `args`; every rendered object as JSON.
fn render(args: &[&str]) -> Vec<Value> {
    let chart = repo().join("helm/vizora-gateway");
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(helm())
        .args(["template", "gw"])
        .arg(&chart)
        .args(["--namespace", "signage", "--kube-version", "1.28.0"])
        .args(args)
        .env("HELM_CACHE_HOME", state.path())
        .env("HELM_CONFIG_HOME", state.path())
        .env("HELM_DATA_HOME", state.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn production() -> String {
    repo()
        .join("helm/vizora-gateway/ci/production-values.yaml")
        .display()
        .to_string()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// The Deployment's (or Job's) only container.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[test]
fn grace_period_outlasts_prestop_plus_drain() {
    for args in [
        vec![],
        vec!["-f".to_string(), production()],
        vec![
            "--set".into(),
            "config.drainSeconds=120,lifecycle.preStopSeconds=7".into(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let objs = render(&args);
        let deploy = one(&objs, "Deployment");
        let drain = find(&objs, "ConfigMap")
            .iter()
            .find_map(|c| c["data"].get("DRAIN_SECONDS"))
            .map(int)
            .expect("DRAIN_SECONDS in the gateway's ConfigMap");
        let pre_stop = container(deploy)["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .unwrap();
        let pause = int(&pre_stop[pre_stop.len() - 1]);
        let grace = int(&deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]);
        assert!(
            grace > drain + pause,
            "{args:?}: grace {grace} s must exceed drain {drain} s + preStop {pause} s"
        );
    }
    let objs = render(&[
        "--set",
        "config.drainSeconds=120,lifecycle.preStopSeconds=7",
    ]);
    assert_eq!(
        int(&one(&objs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
        120 + 7 + 10
    );
}

#[tokio::test]
async fn probe_paths_and_hook_commands_exist_on_the_binary() {
    let objs = render(&["-f", &production()]);
    let deploy = one(&objs, "Deployment");
    let c = container(deploy);
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let http = reqwest::Client::new();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(c[probe]["httpGet"]["port"], "http");
        let r = http
            .get(format!("{}{path}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{probe} {path} on a ready gateway"
        );
    }
    assert_eq!(c["ports"][0]["name"], "http");
    // The container commands: the preStop pause, `serve`, and the migration hook's `migrate`.
    let pre_stop: Vec<String> =
        serde_json::from_value(c["lifecycle"]["preStop"]["exec"]["command"].clone()).unwrap();
    assert_eq!(
        pre_stop[0], "/usr/local/bin/vizora-gateway",
        "the Dockerfile's path"
    );
    // The rendered pause is seconds long; run the same subcommand and flag with 0.
    assert!(pre_stop[1..].contains(&"--seconds".to_string()));
    let pause = Command::new(gateway_bin())
        .args([pre_stop[1].as_str(), "--seconds", "0"])
        .status()
        .unwrap();
    assert!(pause.success(), "preStop subcommand {pre_stop:?}");
    let job = one(&render(&[]), "Job").clone();
    for args in [&c["args"], &container(&job)["args"]] {
        let sub = args[0].as_str().unwrap();
        let help = Command::new(gateway_bin())
            .args(["help", sub])
            .output()
            .unwrap();
        assert!(help.status.success(), "`vizora-gateway {sub}` exists");
    }
    assert_eq!(container(&job)["args"], json!(["migrate"]));
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
}

/// With `config.internalPort` (ci/internal-port-values.yaml) the probes and the ServiceMonitor
/// use the internal port, and on a real gateway started with that `INTERNAL_PORT` their paths
/// answer there and not on the public port the Ingress reaches.
#[tokio::test]
async fn internal_port_carries_probes_and_metrics_on_the_binary() {
    let values = repo()
        .join("helm/vizora-gateway/ci/internal-port-values.yaml")
        .display()
        .to_string();
    let objs = render(&["-f", &values]);
    let deploy = one(&objs, "Deployment");
    let c = container(deploy);
    let internal = int(&one(&objs, "ConfigMap")["data"]["INTERNAL_PORT"]);
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| int(&p["containerPort"]))
    };
    assert_eq!(port("internal"), Some(internal));
    assert_ne!(port("http"), Some(internal));
    let sm = &one(&objs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(sm["port"], "internal");
    let ing = one(&objs, "Ingress");
    for p in ing["spec"]["rules"][0]["http"]["paths"].as_array().unwrap() {
        assert_eq!(p["backend"]["service"]["port"]["name"], "http");
    }

    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).internal_port()).await;
    let http = reqwest::Client::new();
    let mut paths: Vec<String> = ["livenessProbe", "readinessProbe", "startupProbe"]
        .iter()
        .map(|probe| {
            assert_eq!(c[probe]["httpGet"]["port"], "internal", "{probe}");
            c[probe]["httpGet"]["path"].as_str().unwrap().to_string()
        })
        .collect();
    paths.push(sm["path"].as_str().unwrap().to_string());
    // 200 on the internal port, 404 on the public one.
    for path in paths {
        for (base, want) in [(gw.api_url(), 200), (gw.url(), 404)] {
            let status = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), want, "{path} on {base}");
        }
    }
}

#[test]
fn hpa_pdb_and_spread_follow_the_values() {
    let objs = render(&[
        "--set",
        "autoscaling.enabled=true,autoscaling.minReplicas=5,autoscaling.maxReplicas=9,\
         autoscaling.targetCPUUtilizationPercentage=55,autoscaling.targetSocketsPerPod=1234,\
         podDisruptionBudget.minAvailable=2,topologySpread.maxSkew=2,\
         topologySpread.zoneWhenUnsatisfiable=DoNotSchedule,strategy.maxSurge=2",
    ]);
    let deploy = one(&objs, "Deployment");
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "the HPA owns the replica count"
    );
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 2);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let hpa = one(&objs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["minReplicas"], 5);
    assert_eq!(hpa["spec"]["maxReplicas"], 9);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    let metrics = hpa["spec"]["metrics"].as_array().unwrap();
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 55);
    assert_eq!(
        metrics[1]["pods"]["metric"]["name"],
        "vizora_gateway_sockets"
    );
    assert_eq!(metrics[1]["pods"]["target"]["averageValue"], "1234");
    let pdb = one(&objs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert!(pdb["spec"].get("maxUnavailable").is_none());
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the PDB selects the gateway pods");
    }
    let spread = deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    let keys: Vec<_> = spread.iter().map(|s| s["topologyKey"].clone()).collect();
    assert_eq!(
        keys,
        vec![
            json!("kubernetes.io/hostname"),
            json!("topology.kubernetes.io/zone")
        ]
    );
    for s in spread {
        assert_eq!(s["maxSkew"], 2);
        assert_eq!(
            s["labelSelector"]["matchLabels"],
            pdb["spec"]["selector"]["matchLabels"]
        );
    }
    assert_eq!(spread[1]["whenUnsatisfiable"], "DoNotSchedule");

    // Defaults: fixed replicas, no HPA, PDB maxUnavailable 1.
    let objs = render(&[]);
    assert_eq!(one(&objs, "Deployment")["spec"]["replicas"], 3);
    assert!(find(&objs, "HorizontalPodAutoscaler").is_empty());
    assert_eq!(
        one(&objs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    let objs = render(&[
        "--set",
        "topologySpread.enabled=false,podDisruptionBudget.enabled=false",
    ]);
    assert!(find(&objs, "PodDisruptionBudget").is_empty());
    assert!(
        one(&objs, "Deployment")["spec"]["template"]["spec"]
            .get("topologySpreadConstraints")
            .is_none()
    );
}

/// (secret name, key, optional) of every secretKeyRef in a workload.
fn secret_refs(workload: &Value) -> Vec<(String, String, bool)> {
    container(workload)["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let r = e["valueFrom"].get("secretKeyRef")?;
            Some((
                r["name"].as_str()?.to_string(),
                r["key"].as_str()?.to_string(),
                r["optional"] == true,
            ))
        })
        .collect()
}

#[test]
fn secret_names_line_up() {
    // The chart's own Secret: the Deployment, the ServiceMonitor and (through the hook's copy)
    // the migration Job read keys that exist.
    let objs = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,secrets.metricsToken=scrape-me",
    ]);
    let secrets = find(&objs, "Secret");
    let by_name = |name: &str| {
        secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("a rendered Secret named {name}"))
    };
    for workload in [one(&objs, "Deployment"), one(&objs, "Job")] {
        let refs = secret_refs(workload);
        assert!(refs.iter().any(|(_, k, _)| k == "DEVICE_JWT_SECRET"));
        for (name, key, optional) in refs {
            let data = &by_name(&name)["data"];
            assert!(
                optional || data.get(&key).is_some(),
                "{} reads {name}/{key}",
                workload["kind"]
            );
        }
    }
    let deploy_secret = &secret_refs(one(&objs, "Deployment"))[0].0;
    let sm = one(&objs, "ServiceMonitor");
    let creds = &sm["spec"]["endpoints"][0]["authorization"]["credentials"];
    assert_eq!(&creds["name"], deploy_secret);
    assert_eq!(creds["key"], "METRICS_TOKEN");
    assert!(
        by_name(deploy_secret)["data"]
            .get("METRICS_TOKEN")
            .is_some()
    );
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // The generated secrets agree between the release Secret and the hook's copy.
    let hook = secret_refs(one(&objs, "Job"))[0].0.clone();
    assert_eq!(
        by_name(deploy_secret)["data"]["JWT_SECRET"],
        by_name(&hook)["data"]["JWT_SECRET"]
    );

    // existingSecret: nothing rendered, everything points at it.
    let objs = render(&["-f", &production()]);
    assert!(find(&objs, "Secret").is_empty());
    for workload in [one(&objs, "Deployment"), one(&objs, "Job")] {
        for (name, _, _) in secret_refs(workload) {
            assert_eq!(name, "vizora-gateway-secrets");
        }
    }
    assert_eq!(
        one(&objs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"]["credentials"]["name"],
        "vizora-gateway-secrets"
    );
}

/// Metric families a real gateway exposes after a device connected, heartbeated and got a
/// command, plus the counters telemetry.rs declares (exposed with `_total` once counted).
async fn exported_families() -> BTreeSet<String> {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let dev = connect(
        gw.client()
            .auth(json!({"token": device_token(DEV_A1, ORG_A)})),
    )
    .await
    .unwrap();
    dev.emit_with_ack("heartbeat", json!({}), Duration::from_secs(10))
        .await
        .unwrap();
    let (st, _) = gw.api().command(DEV_A1, "reload", None).await;
    assert_eq!(st, 201);
    let (st, text) = gw.api().get_text("/metrics", &[]).await;
    assert_eq!(st, 200);
    let mut names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let telemetry = std::fs::read_to_string(repo().join("gateway/src/telemetry.rs")).unwrap();
    // Counters (exported with `_total`) and histograms (all in seconds, `with_unit("s")`): both
    // appear only once something was recorded (a relayed delivery needs a cluster), so their
    // names are read from the instruments' definitions.
    for (opener, suffix) in [("counter(", "_total"), ("f64_histogram(", "_seconds")] {
        for rest in telemetry.split(opener).skip(1) {
            if let Some(name) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
            {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `vizora_gateway_…` name in `text`, histogram series reduced to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("vizora_gateway_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        out.insert(family);
    }
    out
}

#[tokio::test]
async fn alerts_and_dashboard_use_metrics_the_gateway_exports() {
    let exported = exported_families().await;
    assert!(
        exported.contains("vizora_gateway_heartbeat_duration_seconds"),
        "{exported:?}"
    );
    for file in [
        "helm/vizora-gateway/files/alerts.yaml",
        "helm/vizora-gateway/files/grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} uses the gateway's metrics");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the gateway does not export: {unknown:?}"
        );
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("helm/vizora-gateway/files/grafana-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
    // The chart ships the dashboard as a sidecar ConfigMap and the rules as a PrometheusRule.
    let objs = render(&["-f", &production()]);
    let cm = find(&objs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let shipped: Value =
        serde_json::from_str(cm["data"]["vizora-gateway.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard);
    let rules = one(&objs, "PrometheusRule");
    assert!(
        rules["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len()
            >= 5
    );
}

/// Every key path of `v` (maps descended, anything else a leaf).
fn key_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, child) in map {
                key_paths(child, &format!("{prefix}{k}."), out);
            }
        }
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

#[test]
fn chart_readme_lists_every_value() {
    let chart = repo().join("helm/vizora-gateway");
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let mut paths = Vec::new();
    key_paths(&values, "", &mut paths);
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| {
            // A map value (resources, securityContext…) is documented as a whole.
            let parts: Vec<&str> = p.split('.').collect();
            !(1..=parts.len()).any(|n| readme.contains(&format!("| `{}` |", parts[..n].join("."))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from the chart README: {missing:?}"
    );
}

/// `vizora-gateway check-config` with exactly `env`: (exit code, stderr).
fn check_config(env: &serde_json::Map<String, Value>) -> (Option<i32>, String) {
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("check-config").env_clear();
    for (k, v) in env {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compose_and_chart_environments_pass_check_config() {
    // The compose replicas' environment, interpolated from .env.example.
    let compose = Command::new(repo().join(".ci/venv/bin/docker-compose"))
        .current_dir(repo())
        .args([
            "-f",
            "docker-compose.yml",
            "--env-file",
            ".env.example",
            "config",
            "--format",
            "json",
        ])
        .output()
        .expect("docker-compose from scripts/check-deploy");
    assert!(compose.status.success());
    let compose: Value = serde_json::from_slice(&compose.stdout).unwrap();
    for svc in ["gateway-1", "gateway-2", "gateway-3", "migrate"] {
        let env = compose["services"][svc]["environment"].as_object().unwrap();
        let (code, err) = check_config(env);
        assert_eq!(code, Some(0), "compose {svc}: {err}");
    }
    // The chart's ConfigMap plus its Secret, as the pod sees them.
    for args in [
        vec![],
        vec!["--set", "secrets.minioAccessKey=k,secrets.minioSecretKey=s"],
    ] {
        let objs = render(&args);
        let mut env = one(&objs, "ConfigMap")["data"].as_object().unwrap().clone();
        let secret = find(&objs, "Secret")
            .into_iter()
            .find(|s| s["metadata"]["annotations"].get("helm.sh/hook").is_none())
            .unwrap();
        decode_secret_into(&secret["data"], &mut env);
        let (code, err) = check_config(&env);
        assert_eq!(code, Some(0), "chart {args:?}: {err}");
    }
}

#[test]
fn ingress_fits_screenshots_and_outlives_pings() {
    for shot in ["2097152", "8388608"] {
        let set = format!("config.screenshotMaxBytes={shot}");
        let objs = render(&["-f", &production(), "--set", &set]);
        let ing = one(&objs, "Ingress");
        let a = &ing["metadata"]["annotations"];
        let body_k = int(&json!(
            a["nginx.ingress.kubernetes.io/proxy-body-size"]
                .as_str()
                .unwrap()
                .strip_suffix('k')
                .unwrap()
        ));
        let shot: i64 = shot.parse().unwrap();
        // The gateway's Engine.IO payload cap: base64 of the image + 16 KiB.
        assert!(
            body_k * 1024 > shot * 4 / 3 + 16 * 1024,
            "{body_k}k for {shot} B"
        );
        let cm = find(&objs, "ConfigMap")
            .into_iter()
            .find(|c| c["data"].get("PING_INTERVAL_MS").is_some())
            .unwrap();
        let ping_s =
            (int(&cm["data"]["PING_INTERVAL_MS"]) + int(&cm["data"]["PING_TIMEOUT_MS"])) / 1000;
        for t in ["proxy-read-timeout", "proxy-send-timeout"] {
            let v = int(&a[format!("nginx.ingress.kubernetes.io/{t}")]);
            assert!(
                v > ping_s,
                "{t} {v} s must outlive ping interval + timeout {ping_s} s"
            );
        }
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        assert_eq!(
            a["cert-manager.io/cluster-issuer"], "letsencrypt",
            "user annotations kept"
        );
        assert_eq!(
            ing["spec"]["tls"][0]["secretName"],
            "realtime-example-com-tls"
        );
        let paths: Vec<_> = ing["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].clone())
            .collect();
        assert_eq!(
            paths,
            vec![json!("/socket.io/")],
            "the internal API stays private"
        );
        assert_eq!(
            ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            one(&objs, "Service")["metadata"]["name"]
        );
    }
}

#[test]
fn redis_cluster_nodes_replace_redis_url() {
    // Issue 19: redis.clusterNodes renders REDIS_CLUSTER_NODES (and REDIS_CLUSTER_TLS) into the
    // ConfigMap; REDIS_URL is then neither in the Secret nor in either workload, while the data
    // nodes' credentials are passed and the Sentinel ones are not.
    let nodes = "redis-cluster-0.redis-cluster:6379,redis-cluster-1.redis-cluster:6379";
    // `--set` splits at commas: the list's own are escaped.
    let set = format!(
        "redis.clusterNodes={},redis.clusterTls=insecure,secrets.redisUsername=gw,secrets.redisPassword=pw",
        nodes.replace(',', "\\,")
    );
    let objs = render(&["--set", &set]);
    let cm = &one(&objs, "ConfigMap")["data"];
    assert_eq!(cm["REDIS_CLUSTER_NODES"], nodes);
    assert_eq!(cm["REDIS_CLUSTER_TLS"], "insecure");
    assert!(cm.get("REDIS_SENTINELS").is_none(), "{cm}");
    for workload in [one(&objs, "Deployment"), one(&objs, "Job")] {
        let env: Vec<&str> = container(workload)["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(!env.contains(&"REDIS_URL"), "{}: {env:?}", workload["kind"]);
        assert!(env.contains(&"REDIS_USERNAME") && env.contains(&"REDIS_PASSWORD"));
        assert!(
            !env.iter().any(|e| e.starts_with("REDIS_SENTINEL")),
            "{env:?}"
        );
    }
    let mut pod_env = cm.as_object().unwrap().clone();
    for secret in find(&objs, "Secret") {
        let data = secret["data"].as_object().unwrap();
        assert!(
            !data.contains_key("REDIS_URL"),
            "{}",
            secret["metadata"]["name"]
        );
        assert!(data.contains_key("REDIS_PASSWORD"));
        if secret["metadata"]["annotations"]
            .get("helm.sh/hook")
            .is_none()
        {
            decode_secret_into(&secret["data"], &mut pod_env);
        }
    }
    // The gateway takes the pod's environment as it is.
    let (code, err) = check_config(&pod_env);
    assert_eq!(code, Some(0), "cluster chart environment: {err}");

    // Cluster and Sentinel together, or cluster TLS without a cluster: rendering fails, naming
    // the values.
    let refused = |args: &[&str]| {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(helm())
            .args(["template", "gw"])
            .arg(repo().join("helm/vizora-gateway"))
            .args(args)
            .env("HELM_CACHE_HOME", state.path())
            .env("HELM_CONFIG_HOME", state.path())
            .env("HELM_DATA_HOME", state.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "helm template {args:?} rendered");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&[
        "--set",
        "redis.clusterNodes=redis-cluster-0:6379",
        "--set",
        "config.redisSentinels=sentinel-0:26379,config.redisSentinelMaster=mymaster",
    ]);
    assert!(
        err.contains("redis.clusterNodes") && err.contains("config.redisSentinels"),
        "{err}"
    );
    let err = refused(&["--set", "redis.clusterTls=true"]);
    assert!(err.contains("redis.clusterTls"), "{err}");
}

/// A Secret's `data`, base64-decoded, added to an environment map (as the pod would see it).
fn decode_secret_into(data: &Value, env: &mut serde_json::Map<String, Value>) {
    use base64::Engine;
    for (k, v) in data.as_object().unwrap() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        env.insert(k.clone(), Value::String(String::from_utf8(raw).unwrap()));
    }
}
