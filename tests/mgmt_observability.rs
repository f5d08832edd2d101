//! Observability wiring: a real Prometheus server (Debian package
//! `prometheus`) scrapes rtedge and answers queries about `rtedge_` series;
//! every metric the Grafana dashboard and the alert rules use exists in
//! `/metrics`; the deploy files are valid.

mod common;
mod mgmt_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mgmt_common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// Metric names (`rtedge_*`, `process_*`) mentioned in a PromQL-bearing text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("rtedge_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if (k == "expr" || k == "query" || k == "definition") && x.is_string() {
                    out.push(x.as_str().unwrap_or_default().to_string());
                } else {
                    dashboard_exprs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alert_metrics_exist_in_metrics_output() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    // Some traffic, so nothing is missing for want of a sample.
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("x")).await;
    let m = http.metrics().await;
    let exposed: BTreeSet<String> = m.samples.iter().map(|s| s.name.clone()).collect();

    // The dashboard: valid JSON, importable shape.
    let dash: Value =
        serde_json::from_str(&read("grafana/dashboards/rtedge.json")).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "rtedge-overview");
    assert!(dash["schemaVersion"].as_u64() >= Some(30));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
    );
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    let dash_metrics = metric_names(&exprs.join("\n"));
    assert!(dash_metrics.len() > 25, "{dash_metrics:?}");
    // Every topic the issue asks the dashboard to show.
    for needle in [
        "rtedge_connections_active",
        "rtedge_handshakes_total",
        "rtedge_frames_received_total",
        "rtedge_bytes_sent_total",
        "rtedge_msrp_requests_relayed_total",
        "rtedge_msrp_responses_total",
        "rtedge_msrp_auth_total",
        "rtedge_handshake_duration_seconds_bucket",
        "rtedge_relay_latency_seconds_bucket",
        "rtedge_core_connections_active",
        "rtedge_keepalive_failures_total",
    ] {
        assert!(dash_metrics.contains(needle), "dashboard lacks {needle}");
    }

    let alerts = read("prometheus/rtedge-alerts.yml");
    let alert_metrics = metric_names(&alerts);
    for needle in [
        "rtedge_handshakes_total",
        "rtedge_msrp_auth_total",
        "rtedge_reactor_heartbeat_age_seconds",
        "rtedge_connections_limit",
        "rtedge_msrp_failure_reports_total",
        "rtedge_msrp_malformed_total",
    ] {
        assert!(alert_metrics.contains(needle), "alerts lack {needle}");
    }
    for name in dash_metrics.iter().chain(&alert_metrics) {
        assert!(
            exposed.contains(name),
            "{name} is used by deploy/ but not in /metrics"
        );
    }
    within("close", ws.close(None)).await.expect("close");
}

#[test]
fn deploy_files_are_valid() {
    // The example configuration passes check-config.
    let out = Command::new(env!("CARGO_BIN_EXE_rtedge"))
        .arg("check-config")
        .arg(deploy("etc/rtedge/rtedge.toml"))
        .output()
        .expect("run check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The systemd unit has what the data plane needs.
    let unit = read("systemd/rtedge.service");
    for line in [
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/rtedge run --config /etc/rtedge/rtedge.toml",
        // `systemctl reload rtedge` reads the users file again.
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "rtedge.service lacks {line}");
    }
    assert!(read("systemd/rtedge-mgmt.service").contains("rtedge mgmt --attach"));
    // Grafana provisioning files name their kinds.
    assert!(read("grafana/provisioning/dashboards/rtedge.yml").contains("type: file"));
    assert!(read("grafana/provisioning/datasources/prometheus.yml").contains("type: prometheus"));
    // promtool validates the Prometheus files, and runs the alert rules'
    // unit tests: each alert fires on the incident it is for and stays quiet
    // below its threshold.
    let Some(promtool) = required_tool("promtool", "prometheus") else {
        return;
    };
    for args in [
        vec!["check", "rules", "rtedge-alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "rtedge-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(deploy("prometheus"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server killed on drop.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(bin: &Path, dir: &Path, target: std::net::SocketAddr) -> Prometheus {
    std::fs::copy(
        deploy("prometheus/rtedge-alerts.yml"),
        dir.join("rtedge-alerts.yml"),
    )
    .expect("copy rules");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rtedge-alerts.yml\n\
             scrape_configs:\n  - job_name: rtedge\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).expect("log file"),
        ));
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Prometheus {
        child: cmd.spawn().expect("spawn prometheus"),
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls `f` every 200 ms for up to `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn real_prometheus_scrapes_rtedge_series() {
    let Some(bin) = required_tool("prometheus", "prometheus") else {
        return;
    };
    let srv = MgmtServer::start(Opts::default());
    let mgmt = srv.mgmt.expect("mgmt");
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("for prometheus")).await;

    let dir = TempDir::new("prometheus");
    let prom = start_prometheus(&bin, dir.path(), mgmt);
    let client = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .no_proxy()
        .build()
        .expect("client");
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let limit = Duration::from_secs(60);
    let query = |q: &'static str| {
        let client = client.clone();
        let base = prom.base.clone();
        async move {
            let url =
                reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), [("query", q)])
                    .ok()?;
            let r = client.get(url).send().await.ok()?;
            let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
            (v["status"] == "success").then_some(v["data"]["result"].clone())
        }
    };

    // Prometheus is up and scraping rtedge.
    eventually("prometheus ready", limit, async || {
        let r = client
            .get(format!("{}/-/ready", prom.base))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let up = eventually("up{job=\"rtedge\"} == 1", limit, async || {
        let r = query("up{job=\"rtedge\"}").await?;
        let v = r.get(0)?["value"][1].as_str()?.to_string();
        (v == "1").then_some(v)
    })
    .await;
    assert_eq!(up, "1", "{}", log());

    // rtedge_ series are stored and queryable with their labels.
    let accepted = eventually("rtedge_connections_accepted_total", limit, async || {
        let r = query("rtedge_connections_accepted_total{transport=\"ws\"}").await?;
        let v: f64 = r.get(0)?["value"][1].as_str()?.parse().ok()?;
        (v >= 1.0).then_some(v)
    })
    .await;
    assert!(accepted >= 1.0);
    let names = eventually("rtedge_ series names", limit, async || {
        let r = client
            .get(format!("{}/api/v1/label/__name__/values", prom.base))
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        let names: Vec<String> = v["data"]
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .filter(|n| n.starts_with("rtedge_"))
            .collect();
        (names.len() > 30).then_some(names)
    })
    .await;
    for n in [
        "rtedge_handshakes_total",
        "rtedge_handshake_duration_seconds_bucket",
        "rtedge_core_connections_active",
        "rtedge_protocol_enabled",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not stored: {names:?}");
    }
    let per_reason = eventually("handshakes by result", limit, async || {
        let r = query("sum by (result) (rtedge_handshakes_total)").await?;
        (r.as_array()?.len() == 2).then_some(r)
    })
    .await;
    assert!(per_reason.to_string().contains("accepted"), "{per_reason}");

    // The alert rules load and evaluate without errors.
    let rules = eventually("rules evaluated", limit, async || {
        let r = client
            .get(format!("{}/api/v1/rules", prom.base))
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        evaluated.then_some(rules)
    })
    .await;
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}\n{}", log());
    }
    assert!(rules.len() >= 5);
    within("close", ws.close(None)).await.expect("close");
}
