//! deploy/ checked against the binary, since CI cannot run docker or kubectl: every YAML
//! parses (all documents); every kustomization's resources and patches exist and its
//! patches, replicas and images name what it deploys; every Deployment has gRPC
//! liveness and readiness probes on the port its configuration makes the server listen
//! on, and the rest of what a production Deployment needs; every `TENURE_*` variable
//! and every `tenure` flag in the manifests, the compose file and the Dockerfile is one
//! the binary accepts (the variables from the configuration's own keys, the flags from
//! `tenure <command> --help`); and every configuration file parses with
//! `Config::from_toml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tenure_platform::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_tenure");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .canonicalize()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// What the binary accepts.

/// The environment variables and flags `tenure` accepts.
struct Accepted {
    env: BTreeSet<String>,
    /// Per subcommand (`serve`, `token`), its flags.
    flags: BTreeMap<String, BTreeSet<String>>,
}

impl Accepted {
    fn from_binary() -> Self {
        // Every configuration key, as its variable: `auth.jwks_file` is
        // TENURE_AUTH__JWKS_FILE. Unset options serialize as null, so all keys appear.
        let mut env = BTreeSet::new();
        let mut keys = Vec::new();
        leaf_keys(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut keys,
        );
        assert!(keys.contains(&"auth.jwks_file".to_owned()), "{keys:?}");
        for k in keys {
            env.insert(format!("TENURE_{}", k.to_uppercase().replace('.', "__")));
        }
        let mut flags = BTreeMap::new();
        for sub in ["serve", "token"] {
            let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
            assert!(out.status.success(), "tenure {sub} --help failed");
            let help = String::from_utf8(out.stdout).unwrap();
            let mut set = BTreeSet::new();
            for word in help.split_whitespace() {
                if let Some(rest) = word.strip_prefix("--") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if !name.is_empty() {
                        set.insert(format!("--{name}"));
                    }
                }
            }
            // The variables clap reads for flags: "[env: TENURE_CONFIG=]".
            for part in help.split("[env: ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                env.insert(name);
            }
            assert!(set.contains("--help"), "{help}");
            flags.insert(sub.to_owned(), set);
        }
        Self { env, flags }
    }

    /// A problem if `name` is a `TENURE_*` variable the binary does not read.
    fn check_env(&self, name: &str, at: &str) -> Option<String> {
        (name.starts_with("TENURE_") && !self.env.contains(name))
            .then(|| format!("{at}: {name} is not a variable tenure reads"))
    }

    /// Problems with a `tenure` command line (`serve --config …`): the subcommand and
    /// each of its flags must exist. Returns `None` when `args` is not a tenure command.
    fn check_command(&self, args: &[String], at: &str) -> Option<Vec<String>> {
        let start = args.iter().position(|a| self.flags.contains_key(a))?;
        let sub = &args[start];
        let known = &self.flags[sub];
        Some(
            args[start + 1..]
                .iter()
                .filter(|a| a.starts_with("--"))
                .filter_map(|a| {
                    let flag = a.split('=').next().unwrap_or(a);
                    (!known.contains(flag))
                        .then(|| format!("{at}: tenure {sub} has no flag {flag}"))
                })
                .collect(),
        )
    }
}

fn leaf_keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

// ---------------------------------------------------------------------------------
// Reading deploy/.

fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let mut v: serde_yaml_ng::Value =
            serde::Deserialize::deserialize(de).map_err(|e| e.to_string())?;
        v.apply_merge().map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(v).map_err(|e| e.to_string())?);
    }
    Ok(docs)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// Every object `{name: TENURE_…, value|valueFrom: …}` (a container's env entry, also
/// inside patches).
fn env_entries<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(n)) = map.get("name")
                && (map.contains_key("value") || map.contains_key("valueFrom"))
            {
                out.push(n);
            }
            map.values().for_each(|x| env_entries(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| env_entries(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------
// Checks. Each returns the problems it found; the test asserts there are none.

#[derive(Default)]
struct Report {
    problems: Vec<String>,
    kustomizations: usize,
    deployments: usize,
    env_vars: usize,
    commands: usize,
    configs: usize,
}

/// A kustomization and everything it deploys (its resources, recursively).
fn kustomize(dir: &Path, report: &mut Report) -> Vec<Value> {
    let file = dir.join("kustomization.yaml");
    let at = file.display().to_string();
    let Ok(text) = std::fs::read_to_string(&file) else {
        report.problems.push(format!("{at}: missing"));
        return Vec::new();
    };
    let k = match parse_yaml(&text) {
        Ok(mut d) if d.len() == 1 => d.remove(0),
        other => {
            report
                .problems
                .push(format!("{at}: not one document: {other:?}"));
            return Vec::new();
        }
    };
    report.kustomizations += 1;
    let mut docs = Vec::new();
    for r in strings(k.get("resources")) {
        let p = dir.join(&r);
        if p.is_dir() {
            docs.extend(kustomize(&p, report));
        } else if p.is_file() {
            match parse_yaml(&std::fs::read_to_string(&p).unwrap()) {
                Ok(d) => docs.extend(d),
                Err(e) => report.problems.push(format!("{}: {e}", p.display())),
            }
        } else {
            report
                .problems
                .push(format!("{at}: resource {r} does not exist"));
        }
    }
    let deployments: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .map(name)
        .collect();
    for patch in k["patches"].as_array().into_iter().flatten() {
        let target_kind = patch["target"]["kind"].as_str();
        let body = match (patch["path"].as_str(), patch["patch"].as_str()) {
            (Some(path), _) => match std::fs::read_to_string(dir.join(path)) {
                Ok(t) => t,
                Err(_) => {
                    report
                        .problems
                        .push(format!("{at}: patch {path} does not exist"));
                    continue;
                }
            },
            (None, Some(inline)) => inline.to_owned(),
            _ => {
                report
                    .problems
                    .push(format!("{at}: a patch without path or patch"));
                continue;
            }
        };
        let parsed = match parse_yaml(&body) {
            Ok(p) => p,
            Err(e) => {
                report.problems.push(format!("{at}: patch: {e}"));
                continue;
            }
        };
        match target_kind {
            Some(tk) => {
                if !docs.iter().any(|d| kind(d) == tk) {
                    report.problems.push(format!(
                        "{at}: a patch targets {tk}, which it does not deploy"
                    ));
                }
            }
            // A strategic-merge patch without a target names its resource.
            None => {
                for p in &parsed {
                    if !docs
                        .iter()
                        .any(|d| kind(d) == kind(p) && name(d) == name(p))
                    {
                        report.problems.push(format!(
                            "{at}: a patch names {} {}, which it does not deploy",
                            kind(p),
                            name(p)
                        ));
                    }
                }
            }
        }
    }
    for r in k["replicas"].as_array().into_iter().flatten() {
        let n = r["name"].as_str().unwrap_or_default();
        if !deployments.contains(n) {
            report
                .problems
                .push(format!("{at}: replicas for {n}, which it does not deploy"));
        }
    }
    let images: BTreeSet<&str> = docs
        .iter()
        .flat_map(|d| containers(d))
        .filter_map(|c| c["image"].as_str())
        .map(|i| i.split(':').next().unwrap_or(i))
        .collect();
    for i in k["images"].as_array().into_iter().flatten() {
        let n = i["name"].as_str().unwrap_or_default();
        if !images.contains(n) {
            report
                .problems
                .push(format!("{at}: images names {n}, which no container uses"));
        }
    }
    docs
}

fn containers(d: &Value) -> Vec<&Value> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The Deployments of one kustomization's output, with the ConfigMaps and Services next
/// to them.
fn check_deployments(docs: &[Value], at: &str, report: &mut Report) {
    for d in docs.iter().filter(|d| kind(d) == "Deployment") {
        report.deployments += 1;
        let at = format!("{at}: Deployment {}", name(d));
        let pod = &d["spec"]["template"]["spec"];
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let mut p = Vec::new();
        if pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) < 10 {
            p.push("terminationGracePeriodSeconds under 10".to_owned());
        }
        let cs = containers(d);
        if cs.is_empty() {
            p.push("no containers".to_owned());
        }
        for c in cs {
            let args: Vec<String> = strings(c.get("command"))
                .into_iter()
                .chain(strings(c.get("args")))
                .collect();
            let listen = match listen_port(docs, pod, c, &args) {
                Ok(port) => port,
                Err(e) => {
                    p.push(e);
                    continue;
                }
            };
            let ports: BTreeMap<&str, u64> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap_or_default(),
                        x["containerPort"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if !ports.values().any(|v| *v == listen) {
                p.push(format!(
                    "the server listens on {listen}, no containerPort says so"
                ));
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let pr = &c[probe];
                if pr.is_null() && probe == "startupProbe" {
                    continue;
                }
                match pr["grpc"]["port"].as_u64() {
                    None => p.push(format!("{probe}: not a grpc probe")),
                    Some(port) if port != listen => p.push(format!(
                        "{probe}: grpc port {port}, but the server listens on {listen}"
                    )),
                    Some(_) => {}
                }
            }
            if c["lifecycle"]["preStop"].is_null() {
                p.push("no preStop".to_owned());
            }
            let non_root = c["securityContext"]["runAsNonRoot"].as_bool() == Some(true)
                || pod["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
            if !non_root {
                p.push("not runAsNonRoot".to_owned());
            }
            if c["securityContext"]["readOnlyRootFilesystem"].as_bool() != Some(true) {
                p.push("root filesystem not read-only".to_owned());
            }
            for (what, r) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                if c["resources"][what][r].is_null() {
                    p.push(format!("no resources.{what}.{r}"));
                }
            }
            // Services selecting this pod reach the serving port.
            for s in docs.iter().filter(|s| kind(s) == "Service") {
                let sel = s["spec"]["selector"].as_object();
                let selects = sel
                    .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v));
                if !selects {
                    continue;
                }
                for sp in s["spec"]["ports"].as_array().into_iter().flatten() {
                    let target = match &sp["targetPort"] {
                        Value::String(n) => ports.get(n.as_str()).copied(),
                        Value::Number(n) => n.as_u64(),
                        _ => sp["port"].as_u64(),
                    };
                    if target != Some(listen) {
                        p.push(format!(
                            "Service {} targets {:?}, but the server listens on {listen}",
                            name(s),
                            sp["targetPort"]
                        ));
                    }
                }
            }
        }
        report
            .problems
            .extend(p.into_iter().map(|x| format!("{at}: {x}")));
    }
}

/// The port a container's server listens on: `--listen`, else TENURE_LISTEN, else the
/// `listen` of the configuration file named by `--config` (a ConfigMap mounted there,
/// which must parse), else the default.
fn listen_port(docs: &[Value], pod: &Value, c: &Value, args: &[String]) -> Result<u64, String> {
    let flag = |f: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            if a == f {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(&format!("{f}=")).map(str::to_owned)
            }
        })
    };
    let port_of = |addr: &str| -> Result<u64, String> {
        addr.parse::<std::net::SocketAddr>()
            .map(|a| u64::from(a.port()))
            .map_err(|e| format!("listen address {addr:?}: {e}"))
    };
    let mut config = Config::default();
    if let Some(path) = flag("--config") {
        let path = Path::new(&path);
        let dir = path.parent().unwrap().to_str().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .ok_or(format!(
                "--config {}: nothing is mounted at {dir}",
                path.display()
            ))?;
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .ok_or(format!("volume {} is not defined", mount["name"]))?;
        let cm_name = volume["configMap"]["name"].as_str().ok_or(format!(
            "--config: volume {} is not a ConfigMap",
            mount["name"]
        ))?;
        let key = volume["configMap"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["path"].as_str() == Some(file))
            .and_then(|i| i["key"].as_str())
            .unwrap_or(file);
        let cm = docs
            .iter()
            .find(|d| kind(d) == "ConfigMap" && name(d) == cm_name)
            .ok_or(format!("ConfigMap {cm_name} is not deployed with it"))?;
        let text = cm["data"][key]
            .as_str()
            .ok_or(format!("ConfigMap {cm_name} has no {key}"))?;
        config = Config::from_toml(text).map_err(|e| format!("ConfigMap {cm_name}: {e:#}"))?;
    }
    if let Some(addr) = flag("--listen") {
        return port_of(&addr);
    }
    let env_listen = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "TENURE_LISTEN")
        .and_then(|e| e["value"].as_str());
    if let Some(addr) = env_listen {
        return port_of(addr);
    }
    Ok(u64::from(config.listen.port()))
}

/// Every YAML document under `dir`, with the file it came from.
fn all_yaml(dir: &Path, report: &mut Report) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in files_under(dir).into_iter().filter(|f| is_yaml(f)) {
        match parse_yaml(&std::fs::read_to_string(&f).unwrap()) {
            Ok(docs) if docs.is_empty() => {
                report
                    .problems
                    .push(format!("{}: no documents", f.display()));
            }
            Ok(docs) => out.extend(docs.into_iter().map(|d| (f.clone(), d))),
            Err(e) => report.problems.push(format!("{}: {e}", f.display())),
        }
    }
    out
}

/// Variables and command lines anywhere in the YAML (Kubernetes env entries and args,
/// JSON patches, compose `environment` and `command`), configurations in ConfigMaps.
fn check_yaml_names(docs: &[(PathBuf, Value)], accepted: &Accepted, report: &mut Report) {
    for (file, doc) in docs {
        let at = file.display().to_string();
        let mut env = Vec::new();
        env_entries(doc, &mut env);
        for n in env {
            report.env_vars += 1;
            report.problems.extend(accepted.check_env(n, &at));
        }
        for c in containers(doc) {
            let args: Vec<String> = strings(c.get("command"))
                .into_iter()
                .chain(strings(c.get("args")))
                .collect();
            if let Some(p) = accepted.check_command(&args, &at) {
                report.commands += 1;
                report.problems.extend(p);
            }
        }
        if kind(doc) == "ConfigMap" {
            for (key, text) in doc["data"].as_object().into_iter().flatten() {
                if key.ends_with(".toml") {
                    report.configs += 1;
                    if let Err(e) = Config::from_toml(text.as_str().unwrap_or_default()) {
                        report
                            .problems
                            .push(format!("{at}: ConfigMap {} {key}: {e:#}", name(doc)));
                    }
                }
            }
        }
        if let Some(services) = doc["services"].as_object() {
            check_compose(file, services, accepted, report);
        }
    }
}

fn check_compose(
    file: &Path,
    services: &serde_json::Map<String, Value>,
    accepted: &Accepted,
    report: &mut Report,
) {
    let dir = file.parent().unwrap();
    for (svc, s) in services {
        let at = format!("{}: service {svc}", file.display());
        match &s["environment"] {
            Value::Object(m) => {
                for k in m.keys() {
                    report.env_vars += 1;
                    report.problems.extend(accepted.check_env(k, &at));
                }
            }
            Value::Array(a) => {
                for e in a.iter().filter_map(Value::as_str) {
                    report.env_vars += 1;
                    let k = e.split('=').next().unwrap_or(e);
                    report.problems.extend(accepted.check_env(k, &at));
                }
            }
            _ => {}
        }
        let args = strings(s.get("command"));
        let Some(p) = accepted.check_command(&args, &at) else {
            continue;
        };
        report.commands += 1;
        report.problems.extend(p);
        // The configuration mounted at --config parses, and the published port is the
        // one it listens on.
        let mut config = Config::default();
        if let Some(i) = args.iter().position(|a| a == "--config") {
            let target = args.get(i + 1).cloned().unwrap_or_default();
            let source = strings(s.get("volumes"))
                .into_iter()
                .chain(
                    s["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned)),
                )
                .find_map(|v| {
                    let mut parts = v.split(':');
                    let (src, dst) = (parts.next()?, parts.next()?);
                    (dst == target).then(|| src.to_owned())
                });
            match source {
                None => report
                    .problems
                    .push(format!("{at}: nothing mounted at {target}")),
                Some(src) => match std::fs::read_to_string(dir.join(&src)) {
                    Err(_) => report.problems.push(format!("{at}: {src} does not exist")),
                    Ok(text) => match Config::from_toml(&text) {
                        Ok(c) => config = c,
                        Err(e) => report.problems.push(format!("{at}: {src}: {e:#}")),
                    },
                },
            }
        }
        let listen = config.listen.port().to_string();
        for port in strings(s.get("ports")) {
            let container = port.rsplit(':').next().unwrap_or_default();
            if container != listen {
                report.problems.push(format!(
                    "{at}: publishes container port {container}, but the server listens on {listen}"
                ));
            }
        }
    }
}

/// ENV variables and the ENTRYPOINT/CMD command line of a Dockerfile.
fn check_dockerfile(file: &Path, accepted: &Accepted, report: &mut Report) {
    let text = std::fs::read_to_string(file).unwrap();
    let at = file.display().to_string();
    let mut command = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            let name = rest.split(['=', ' ']).next().unwrap_or_default();
            report.env_vars += 1;
            report.problems.extend(accepted.check_env(name, &at));
        }
        for instr in ["ENTRYPOINT ", "CMD "] {
            if let Some(rest) = line.strip_prefix(instr) {
                match serde_json::from_str::<Vec<String>>(rest) {
                    Ok(v) => command.extend(v),
                    Err(e) => report
                        .problems
                        .push(format!("{at}: {instr}is not a JSON array: {e}")),
                }
            }
        }
        if let Some(port) = line.strip_prefix("EXPOSE ") {
            let default = Config::default().listen.port().to_string();
            if port.trim() != default {
                report.problems.push(format!(
                    "{at}: EXPOSE {port}, the default port is {default}"
                ));
            }
        }
    }
    match accepted.check_command(&command, &at) {
        Some(p) => {
            report.commands += 1;
            report.problems.extend(p);
        }
        None => report.problems.push(format!(
            "{at}: ENTRYPOINT/CMD is not a tenure command: {command:?}"
        )),
    }
}

fn check_deploy_dir(dir: &Path, accepted: &Accepted) -> Report {
    let mut report = Report::default();
    let docs = all_yaml(dir, &mut report);
    check_yaml_names(&docs, accepted, &mut report);
    for f in files_under(dir) {
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let kdir = f.parent().unwrap();
            let out = kustomize(kdir, &mut report);
            check_deployments(&out, &kdir.display().to_string(), &mut report);
        }
        if f.extension().is_some_and(|e| e == "toml") {
            report.configs += 1;
            let text = std::fs::read_to_string(&f).unwrap();
            if let Err(e) = Config::from_toml(&text) {
                report.problems.push(format!("{}: {e:#}", f.display()));
            }
        }
        if f.file_name().is_some_and(|n| n == "Dockerfile") {
            check_dockerfile(&f, accepted, &mut report);
        }
    }
    report
}

#[test]
fn the_deploy_folder_matches_what_the_binary_accepts() {
    let accepted = Accepted::from_binary();
    let report = check_deploy_dir(&deploy_dir(), &accepted);
    assert!(
        report.problems.is_empty(),
        "deploy/ has problems:\n  {}",
        report.problems.join("\n  ")
    );
    // The checks saw what is there: base, three overlays (one of them counted again
    // inside mesh-linkerd) ; every context's Deployment in base, split and mesh, the
    // embedded one; the variables and command lines of manifests, compose, Dockerfile.
    assert!(report.kustomizations >= 4, "{}", report.kustomizations);
    assert!(report.deployments >= 13, "{}", report.deployments);
    assert!(report.env_vars >= 10, "{}", report.env_vars);
    assert!(report.commands >= 11, "{}", report.commands);
    assert!(report.configs >= 7, "{}", report.configs);
}

#[test]
fn a_wrong_name_port_or_path_is_reported() {
    let accepted = Accepted::from_binary();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - app.yaml\n  - missing.yaml\nreplicas:\n  - name: tenure-nope\n    count: 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  tenure.toml: |
    listen = "0.0.0.0:7000"
    lisen = "typo"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tenure-x}
spec:
  template:
    metadata: {labels: {app: x}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: tenure
          image: tenure
          args: ["serve", "--listn", "0.0.0.0:50051", "--listen", "0.0.0.0:7000"]
          ports: [{name: grpc, containerPort: 7000}]
          env:
            - {name: TENURE_AUTH__JWKS_FIEL, value: /x}
            - {name: TENURE_LISTEN, value: "0.0.0.0:9"}
          livenessProbe: {grpc: {port: 50051}}
          readinessProbe: {httpGet: {port: 7000}}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true}
          resources: {requests: {cpu: 1, memory: 1}, limits: {cpu: 1, memory: 1}}
"#,
    )
    .unwrap();
    let report = check_deploy_dir(dir.path(), &accepted);
    let all = report.problems.join("\n");
    for expected in [
        "resource missing.yaml does not exist",
        "replicas for tenure-nope",
        "TENURE_AUTH__JWKS_FIEL is not a variable",
        "has no flag --listn",
        "livenessProbe: grpc port 50051, but the server listens on 7000",
        "readinessProbe: not a grpc probe",
        "ConfigMap cfg tenure.toml",
    ] {
        assert!(
            all.contains(expected),
            "{expected:?} not reported in:\n{all}"
        );
    }
    // TENURE_LISTEN is a real variable; only the misspelt one is reported.
    assert!(!all.contains("TENURE_LISTEN is not"), "{all}");
}
