//! `rtedge-loadgen run FILE.toml`: several scenarios run together (a mixed
//! workload), one combined report.
//!
//! Each `[[scenario]]` table is turned into the command line of its
//! subcommand (`kind`), so every option, default and check is the one of
//! the subcommand: `connections = 1000` → `--connections 1000`, `text =
//! true` → `--text`, arrays repeat the option, `_` in keys reads as `-`.
//! `[defaults]` applies to every scenario (the scenario's own keys win);
//! `--url` and `--set KEY=VALUE` on the command line override both.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use serde::Serialize;
use std::path::PathBuf;

use crate::report::Report;
use crate::{Cli, Cmd};

pub const HELP: &str = "\
The file lists scenarios; all start at once, each in its own worker threads,
and run for their own --duration. Keys are the subcommand's long options
(see `rtedge-loadgen ws-echo --help`, `ws-connect --help`, `msrp-relay --help`); `[defaults]`
applies to all scenarios. --url and --set override the file. The result is
one report with a section per scenario, and with --json one JSON document
{ \"scenario\": \"mixed\", \"ok\", \"exit_code\", \"scenarios\": [ {\"name\", ...} ] };
--plot draws one row per scenario. Exit status: 1 if any scenario lost or
corrupted a message, else 3 if any failed, else 0 (2: usage error).

Example file (loadgen/examples/mixed.toml):

  [defaults]
  url = \"ws://127.0.0.1:8080/\"
  subprotocol = \"echo\"
  duration = \"30s\"

  [[scenario]]            # 1000 idle connections, keep-alive every 10 s
  name = \"idle\"
  kind = \"ws-connect\"
  connections = 1000
  ping_interval = \"10s\"

  [[scenario]]            # echo traffic, open loop
  name = \"echo\"
  kind = \"ws-echo\"
  connections = 10
  rate = 5000
  size = 256

  [[scenario]]            # handshake storm: 200 new connections per second
  name = \"storm\"
  kind = \"ws-connect\"
  connections = 0
  churn = 200

Example:
  rtedge-loadgen run loadgen/examples/mixed.toml --url ws://127.0.0.1:8080/ \\
      --json mixed.json --plot mixed.svg
  rtedge-loadgen run loadgen/examples/mixed.toml --set duration=5s --dry-run";

#[derive(Args, Debug)]
pub struct RunFileArgs {
    /// Scenario file (TOML).
    #[arg(value_name = "FILE.toml")]
    file: PathBuf,
    /// Server URL for every scenario (overrides the file).
    #[arg(long)]
    url: Option<String>,
    /// Override KEY in every scenario (e.g. --set duration=5s); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Write the combined result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw every scenario's latency and throughput over time into FILE.svg
    /// or FILE.png (format by extension).
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print each scenario's equivalent command line and exit.
    #[arg(long)]
    dry_run: bool,
}

/// One scenario of the file: its name and command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub name: String,
    pub argv: Vec<String>,
}

fn value_args(key: &str, v: &toml::Value, out: &mut Vec<String>) -> Result<()> {
    let flag = format!("--{}", key.replace('_', "-"));
    match v {
        toml::Value::Boolean(true) => out.push(flag),
        toml::Value::Boolean(false) => {}
        toml::Value::String(s) => out.extend([flag, s.clone()]),
        toml::Value::Integer(i) => out.extend([flag, i.to_string()]),
        toml::Value::Float(f) => out.extend([flag, f.to_string()]),
        toml::Value::Array(a) => {
            for x in a {
                value_args(key, x, out)?;
            }
        }
        other => bail!("key {key:?}: unsupported value {other}"),
    }
    Ok(())
}

/// Turn the file into command lines.
pub fn plan(text: &str, url: Option<&str>, sets: &[String]) -> Result<Vec<Planned>> {
    let doc: toml::Table = toml::from_str(text).context("parsing the scenario file")?;
    for k in doc.keys() {
        if k != "defaults" && k != "scenario" {
            bail!("unknown top-level key {k:?} (expected [defaults] and [[scenario]])");
        }
    }
    let defaults = match doc.get("defaults") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("[defaults] must be a table"),
    };
    let Some(toml::Value::Array(list)) = doc.get("scenario") else {
        bail!("no [[scenario]] in the file");
    };
    let mut overrides = toml::Table::new();
    if let Some(u) = url {
        overrides.insert("url".into(), toml::Value::String(u.into()));
    }
    for s in sets {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s:?}: expected KEY=VALUE");
        };
        overrides.insert(k.trim().into(), toml::Value::String(v.trim().into()));
    }
    let mut out = Vec::new();
    for (i, sc) in list.iter().enumerate() {
        let toml::Value::Table(sc) = sc else {
            bail!("scenario {}: not a table", i + 1);
        };
        let mut t = defaults.clone();
        t.extend(sc.clone());
        t.extend(overrides.clone());
        let kind = match t.remove("kind") {
            Some(toml::Value::String(k))
                if k == "ws-echo" || k == "ws-connect" || k == "msrp-relay" =>
            {
                k
            }
            Some(k) => bail!(
                "scenario {}: unknown kind {k} (ws-echo, ws-connect, msrp-relay)",
                i + 1
            ),
            None => bail!("scenario {}: missing kind", i + 1),
        };
        let name = match t.remove("name") {
            Some(toml::Value::String(n)) => n,
            None => format!("{}:{kind}", i + 1),
            Some(n) => bail!("scenario {}: name {n} is not a string", i + 1),
        };
        for k in ["json", "plot", "ready_file", "ready-file"] {
            if t.contains_key(k) {
                bail!("scenario {name}: {k:?} belongs on the `run` command line");
            }
        }
        let mut argv = vec!["rtedge-loadgen".to_string(), kind];
        for (k, v) in &t {
            value_args(k, v, &mut argv).with_context(|| format!("scenario {name}"))?;
        }
        out.push(Planned { name, argv });
    }
    let mut names: Vec<&str> = out.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!("scenario names must be unique");
    }
    Ok(out)
}

#[derive(Serialize)]
struct Combined<'a> {
    tool: &'static str,
    version: &'static str,
    scenario: &'static str,
    file: String,
    ok: bool,
    exit_code: i32,
    scenarios: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_to_run: Vec<&'a (String, String)>,
}

/// `run FILE`: returns the exit status.
pub fn main(a: RunFileArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let planned = plan(&text, a.url.as_deref(), &a.sets)?;
    if let Some(p) = &a.plot {
        crate::plot::check_path(p)?;
    }
    let mut cmds = Vec::new();
    for p in &planned {
        let cli = Cli::try_parse_from(&p.argv)
            .map_err(|e| anyhow::anyhow!("scenario {}: {}", p.name, e.render()))?;
        let mut cmd = cli.cmd;
        let run = match &mut cmd {
            Cmd::WsEcho(x) => &mut x.run,
            Cmd::WsConnect(x) => &mut x.run,
            Cmd::MsrpRelay(x) => &mut x.run,
            Cmd::Run(_) => bail!("scenario files cannot nest"),
        };
        run.label = Some(p.name.clone());
        if a.quiet {
            run.quiet = true;
        } else {
            // Several bars on one terminal do not mix: plain lines.
            run.plain = true;
        }
        cmds.push(cmd);
    }
    if a.dry_run {
        for p in &planned {
            println!("# {}\n{}", p.name, p.argv.join(" "));
        }
        return Ok(0);
    }
    let results: Vec<Result<Report>> = std::thread::scope(|s| {
        let hs: Vec<_> = cmds
            .into_iter()
            .map(|c| s.spawn(move || crate::run_scenario(c)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario thread panicked")))
            })
            .collect()
    });
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for (p, r) in planned.iter().zip(results) {
        match r {
            Ok(r) => reports.push((p.name.clone(), r)),
            Err(e) => failed.push((p.name.clone(), format!("{e:#}"))),
        }
    }
    let mut code = crate::worst(reports.iter().map(|(_, r)| crate::exit_code(r)));
    for (name, r) in &reports {
        println!("== {name} ==");
        print!("{}", r.table());
    }
    for (name, e) in &failed {
        println!("== {name} ==\n  error: {e}");
        code = 2;
    }
    let ok = code == 0;
    println!(
        "mixed: {} scenario(s), result {}",
        planned.len(),
        if ok { "OK" } else { "FAILED" }
    );
    if let Some(path) = &a.json {
        let scenarios = reports
            .iter()
            .map(|(name, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("name".into(), name.clone().into());
                }
                v
            })
            .collect();
        let c = Combined {
            tool: "rtedge-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            scenario: "mixed",
            file: a.file.display().to_string(),
            ok,
            exit_code: code,
            scenarios,
            failed_to_run: failed.iter().collect(),
        };
        crate::write_json(path, &c)?;
    }
    if let Some(path) = &a.plot {
        let items: Vec<(String, &Report)> = reports.iter().map(|(n, r)| (n.clone(), r)).collect();
        crate::plot::write(path, &items)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[defaults]
url = "ws://127.0.0.1:9/"
duration = "30s"

[[scenario]]
name = "idle"
kind = "ws-connect"
connections = 1000
ping_interval = "10s"
local_addr = ["127.0.0.1", "127.0.0.2"]

[[scenario]]
kind = "ws-echo"
rate = 5000.5
text = true
binary = false
"#;

    #[test]
    fn plans_command_lines() {
        let p = plan(FILE, None, &["duration=2s".into()]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "idle");
        let a = &p[0].argv;
        assert_eq!(a[1], "ws-connect");
        let s = a.join(" ");
        assert!(s.contains("--connections 1000"), "{s}");
        assert!(s.contains("--ping-interval 10s"), "{s}");
        assert!(
            s.contains("--local-addr 127.0.0.1 --local-addr 127.0.0.2"),
            "{s}"
        );
        assert!(s.contains("--duration 2s"), "{s}");
        assert!(!s.contains("30s"), "{s}");
        assert_eq!(p[1].name, "2:ws-echo");
        let s = p[1].argv.join(" ");
        assert!(s.contains("--rate 5000.5") && s.contains("--text"), "{s}");
        assert!(!s.contains("--binary"), "{s}");
        let p = plan(FILE, Some("ws://10.0.0.1:80/"), &[]).unwrap();
        assert!(p[1].argv.join(" ").contains("--url ws://10.0.0.1:80/"));
        // Every planned command line parses.
        for x in &p {
            Cli::try_parse_from(&x.argv).unwrap();
        }
    }

    #[test]
    fn rejects_bad_files() {
        assert!(plan("", None, &[]).is_err());
        assert!(plan("[[scenario]]\nkind = \"nope\"\n", None, &[]).is_err());
        assert!(plan("[[scenario]]\nconnections = 1\n", None, &[]).is_err());
        assert!(
            plan(
                "[[scenario]]\nkind = \"ws-echo\"\njson = \"x\"\n",
                None,
                &[]
            )
            .is_err()
        );
        assert!(plan("[x]\n[[scenario]]\nkind = \"ws-echo\"\n", None, &[]).is_err());
        assert!(
            plan(
                "[[scenario]]\nkind = \"ws-echo\"\nname = \"a\"\n[[scenario]]\nkind = \"ws-echo\"\nname = \"a\"\n",
                None,
                &[]
            )
            .is_err()
        );
        assert!(plan("[[scenario]]\nkind = \"ws-echo\"\n", None, &["x".into()]).is_err());
    }

    #[test]
    fn msrp_relay_scenarios_plan() {
        let f = "[defaults]\nduration = \"5s\"\nsubprotocol = \"msrp\"\n\n\
                 [[scenario]]\nkind = \"msrp-relay\"\nurl = \"ws://127.0.0.1:9/\"\n\
                 pairs = 4\nsize = 4096\nwindow = 8\nuser = \"a\"\npassword = \"b\"\n\
                 full_path = true\nrate = 5000\n";
        let p = plan(f, None, &[]).unwrap();
        let s = p[0].argv.join(" ");
        assert!(s.contains("msrp-relay") && s.contains("--pairs 4"), "{s}");
        assert!(s.contains("--full-path") && s.contains("--window 8"), "{s}");
        let cli = Cli::try_parse_from(&p[0].argv).unwrap();
        let Cmd::MsrpRelay(a) = cli.cmd else {
            panic!("msrp-relay expected")
        };
        assert_eq!((a.pairs, a.size, a.window), (4, 4096, Some(8)));
        assert_eq!(a.rate, Some(5000.0));
        assert!(a.full_path);
    }

    #[test]
    fn example_file_plans() {
        let text = include_str!("../examples/mixed.toml");
        let p = plan(text, None, &[]).unwrap();
        assert!(p.len() >= 3);
        for x in &p {
            Cli::try_parse_from(&x.argv).unwrap_or_else(|e| panic!("{}: {e}", x.name));
        }
    }
}
