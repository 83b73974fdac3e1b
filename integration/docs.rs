//! The documentation stays true to the code:
//! - every relative link in the README, `docs/` and the `docker/` READMEs resolves, anchors
//!   included;
//! - every metric or attribute name (`flowtel.*`, `otel.*`) and every Prometheus name
//!   (`flowtel_*`) named in them is one the agent exports;
//! - every configuration key named in them (`section.key`, `[section] key`,
//!   `FLOWTEL_SECTION__KEY`) exists;
//! - the configuration reference in `docs/configuration.md` is what its generator writes.
//!
//! Markdown is parsed with pulldown-cmark: code blocks are not scanned, inline code is.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The pages checked: the README, every page under docs/, the docker READMEs.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![
        repo("README.md"),
        repo("docker/README.md"),
        repo("docker/helm/flowtel/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo("docs"))
        .expect("docs/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "docs/ holds the documentation: {docs:?}");
    pages.extend(docs);
    pages
}

/// What one page links to, names in inline code, and its heading anchors.
#[derive(Default)]
struct Page {
    links: Vec<String>,
    code: Vec<String>,
    anchors: BTreeSet<String>,
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
/// numbered.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn read(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut page = Page::default();
    let mut heading: Option<String> = None;
    for event in Parser::new(&text) {
        match event {
            Event::Start(Tag::Link { dest_url, .. }) => page.links.push(dest_url.to_string()),
            Event::Start(Tag::Heading { level, .. }) if level != HeadingLevel::H1 || heading.is_none() => {
                heading = Some(String::new())
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base = slug(&h);
                    let mut anchor = base.clone();
                    let mut n = 1;
                    while page.anchors.contains(&anchor) {
                        anchor = format!("{base}-{n}");
                        n += 1;
                    }
                    page.anchors.insert(anchor);
                }
            }
            Event::Text(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Code(c) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&c);
                }
                page.code.push(c.to_string());
            }
            _ => {}
        }
    }
    page
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in pages() {
        let page = read(&path);
        for link in &page.links {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                path.clone()
            } else {
                path.parent().expect("a page's folder").join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", path.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let anchors = if target.extension().is_some_and(|e| e == "md") {
                    read(&target).anchors
                } else {
                    BTreeSet::new()
                };
                if !anchors.contains(anchor) {
                    broken.push(format!("{}: {link} (no such heading)", path.display()));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "the pages link to each other: only {checked} relative links"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every string constant in src/names.rs: the exported metric names and attribute keys.
fn exported_names() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo("src/names.rs")).expect("src/names.rs");
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect()
}

/// `a.{b,c}.d` -> `a.b.d`, `a.c.d`.
fn expand(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(open), Some(close)) if open < close => name[open + 1..close]
            .split(',')
            .flat_map(|alt| expand(&format!("{}{}{}", &name[..open], alt, &name[close + 1..])))
            .collect(),
        _ => vec![name.to_string()],
    }
}

/// A name as written in inline code, without a label selector or a value (`name{a="b"}`,
/// `name=value`).
fn bare(code: &str) -> &str {
    let end = code.find(['{', '=', ' ', '(']).unwrap_or(code.len());
    // `flowtel.peer.{subnet,vpc}` keeps its alternatives
    if code[end..].starts_with('{') && code[end..].contains('}') && !code[end..].contains('=') {
        return code;
    }
    &code[..end]
}

/// The BPF programs' names (`flowtel_sockops`, ...), which the performance pages name.
fn bpf_programs() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo("bpf/flowtel.bpf.c")).expect("bpf/flowtel.bpf.c");
    source
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("flowtel_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_and_attribute_named_in_the_docs_is_exported() {
    let names = exported_names();
    let programs = bpf_programs();
    let prometheus: BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("flowtel.") || n.starts_with("process."))
        .map(|n| flowtel::export::prometheus::sanitize(n))
        .collect();
    let mut unknown = Vec::new();
    let mut checked = 0;
    for path in pages() {
        for code in read(&path).code {
            let name = bare(&code);
            // file names, recording rules (`level:metric:operation`, checked by promtool) and
            // BPF programs are not metric names
            if [".toml", ".json", ".yaml", ".yml"]
                .iter()
                .any(|ext| name.ends_with(ext))
                || name.contains(':')
                || programs.contains(name)
            {
                continue;
            }
            if name.starts_with("flowtel.") || name.starts_with("otel.") {
                for one in expand(name) {
                    checked += 1;
                    let known = match one.strip_suffix('*') {
                        Some(prefix) => names.iter().any(|n| n.starts_with(prefix)),
                        None => names.contains(&one),
                    };
                    if !known {
                        unknown.push(format!("{}: `{code}`", path.display()));
                    }
                }
            } else if let Some(rest) = name.strip_prefix("flowtel_") {
                // a Prometheus name: the sanitized OTel name, maybe with a unit and a suffix
                checked += 1;
                let known = prometheus.iter().any(|p| {
                    let p = p.strip_prefix("flowtel_").unwrap_or(p);
                    rest.starts_with(p)
                });
                if !known {
                    unknown.push(format!("{}: `{code}`", path.display()));
                }
            }
        }
    }
    assert!(checked > 50, "the docs name the metrics: only {checked} names checked");
    assert!(
        unknown.is_empty(),
        "names the agent does not export:\n{}",
        unknown.join("\n")
    );
}

/// Whether `path` (dotted) leads somewhere in the serialized default configuration. A map with
/// no fixed keys (networks, headers, services) takes any key below it.
fn config_has(config: &serde_json::Value, path: &[&str]) -> bool {
    let mut at = config;
    for (i, segment) in path.iter().enumerate() {
        match at {
            serde_json::Value::Object(map) => match map.get(*segment) {
                Some(next) => at = next,
                None => return map.is_empty() && i > 0,
            },
            serde_json::Value::Array(_) => return true,
            _ => return false,
        }
    }
    true
}

#[test]
fn every_configuration_key_named_in_the_docs_exists() {
    let config = serde_json::to_value(flowtel::config::Config::default()).expect("the defaults serialize");
    let sections: BTreeSet<String> = config.as_object().expect("a table").keys().cloned().collect();
    let mut unknown = Vec::new();
    let mut checked = 0;
    // the chart's README documents Helm values, which its own test checks (deploy.rs)
    for path in pages().into_iter().filter(|p| !p.ends_with("helm/flowtel/README.md")) {
        for code in read(&path).code {
            let mut keys: Vec<String> = Vec::new();
            // `[section] key = value` or `[section]`
            if let Some(rest) = code.strip_prefix('[') {
                if let Some((section, after)) = rest.split_once(']') {
                    let key = after.split_whitespace().next().unwrap_or("");
                    keys.push(if key.is_empty() || key == "=" {
                        section.to_string()
                    } else {
                        format!("{section}.{key}")
                    });
                }
            } else if let Some(env) = code.strip_prefix("FLOWTEL_") {
                let env = env.split('=').next().unwrap_or("");
                if env.contains("__") && !env.contains('<') {
                    keys.push(env.to_lowercase().replace("__", "."));
                }
            } else {
                let name = bare(&code);
                if name.contains('.') && sections.iter().any(|s| name.starts_with(&format!("{s}."))) {
                    keys.push(name.to_string());
                }
            }
            for key in keys {
                // `monitors[].name`: a key of each table in a list
                let key = key.replace("[]", "");
                let segments: Vec<&str> = key.split('.').collect();
                if !sections.contains(segments[0]) {
                    continue;
                }
                checked += 1;
                if !config_has(&config, &segments) {
                    unknown.push(format!("{}: `{code}`", path.display()));
                }
            }
        }
    }
    assert!(checked > 50, "the docs name configuration keys: only {checked} checked");
    assert!(
        unknown.is_empty(),
        "configuration keys that do not exist:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_configuration_reference_is_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("configuration.md");
    let status = Command::new("python3")
        .arg(repo("docs/generate-config-reference.py"))
        .arg(&out)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&out).expect("generated"),
        std::fs::read_to_string(repo("docs/configuration.md")).expect("committed"),
        "docs/configuration.md is stale: run python3 docs/generate-config-reference.py"
    );
}
