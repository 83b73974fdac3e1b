//! Published prefix lists that name cloud services: AWS `ip-ranges.json`, Google Cloud's
//! `cloud.json`, and plain CSV (`cidr,service[,region]`) for anything else.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::prefixes::PrefixTable;

/// AWS lists every address it owns under this service as well as under the specific one.
const AWS_CATCH_ALL: &str = "AMAZON";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`
    #[default]
    Aws,
    /// `https://www.gstatic.com/ipranges/cloud.json`
    Gcp,
    /// One `cidr,service[,region]` per line; `#` starts a comment.
    Csv,
}

impl ListFormat {
    fn as_str(self) -> &'static str {
        match self {
            ListFormat::Aws => "aws",
            ListFormat::Gcp => "gcp",
            ListFormat::Csv => "csv",
        }
    }
}

/// `[[resources.service_lists]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceListSource {
    pub path: PathBuf,
    #[serde(default)]
    pub format: ListFormat,
    /// Keep only these services (AWS names such as "S3", "DYNAMODB"); empty keeps all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("service list {path} (format {format}): {reason}; fix or remove it in resources.service_lists")]
pub struct ServiceListError {
    pub path: String,
    pub format: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRange {
    pub service: Arc<str>,
    pub region: Option<Arc<str>>,
}

/// Every loaded list in one trie. The longest prefix wins; for the same prefix a specific
/// service beats AWS's catch-all `AMAZON`, otherwise the list loaded later wins.
#[derive(Debug, Default, Clone)]
pub struct ServiceTable {
    table: PrefixTable<ServiceRange>,
}

impl ServiceTable {
    pub fn insert(&mut self, prefix: IpNet, range: ServiceRange) {
        if let Some(existing) = self.table.get_exact_mut(&prefix) {
            if &*range.service == AWS_CATCH_ALL && &*existing.service != AWS_CATCH_ALL {
                return;
            }
            *existing = range;
            return;
        }
        self.table.insert(prefix, range);
    }

    pub fn load(&mut self, source: &ServiceListSource) -> Result<usize, ServiceListError> {
        let error = |reason: String| ServiceListError {
            path: source.path.display().to_string(),
            format: source.format.as_str(),
            reason,
        };
        let text = std::fs::read_to_string(&source.path).map_err(|e| error(format!("cannot read it ({e})")))?;
        let ranges = parse(source.format, &text).map_err(error)?;
        let mut loaded = 0;
        for (prefix, range) in ranges {
            if source.services.is_empty() || source.services.iter().any(|s| **s == *range.service) {
                self.insert(prefix, range);
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    pub fn lookup(&self, addr: std::net::IpAddr) -> Option<&ServiceRange> {
        self.table.lookup(addr).map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn ranges(&self) -> impl Iterator<Item = &ServiceRange> {
        self.table.values()
    }
}

/// Parses one list. The error names the first bad entry.
pub fn parse(format: ListFormat, text: &str) -> Result<Vec<(IpNet, ServiceRange)>, String> {
    let mut names = Interner::default();
    match format {
        ListFormat::Aws => parse_aws(text, &mut names),
        ListFormat::Gcp => parse_gcp(text, &mut names),
        ListFormat::Csv => parse_csv(text, &mut names),
    }
}

#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_string(), Arc::clone(&a));
        a
    }

    fn region(&mut self, s: &str) -> Option<Arc<str>> {
        let s = s.trim();
        // AWS's global services (CloudFront, Route 53) have no region
        (!s.is_empty() && !s.eq_ignore_ascii_case("global")).then(|| self.get(s))
    }
}

fn prefix(s: &str) -> Result<IpNet, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not a CIDR prefix"))
}

fn parse_aws(text: &str, names: &mut Interner) -> Result<Vec<(IpNet, ServiceRange)>, String> {
    #[derive(Deserialize)]
    struct File {
        prefixes: Vec<V4>,
        #[serde(default)]
        ipv6_prefixes: Vec<V6>,
    }
    #[derive(Deserialize)]
    struct V4 {
        ip_prefix: String,
        region: String,
        service: String,
    }
    #[derive(Deserialize)]
    struct V6 {
        ipv6_prefix: String,
        region: String,
        service: String,
    }
    let file: File = serde_json::from_str(text).map_err(|e| format!("not an ip-ranges.json file ({e})"))?;
    let v4 = file.prefixes.into_iter().map(|p| (p.ip_prefix, p.region, p.service));
    let v6 = file
        .ipv6_prefixes
        .into_iter()
        .map(|p| (p.ipv6_prefix, p.region, p.service));
    v4.chain(v6)
        .map(|(p, region, service)| {
            Ok((
                prefix(&p)?,
                ServiceRange {
                    service: names.get(service.trim()),
                    region: names.region(&region),
                },
            ))
        })
        .collect()
}

fn parse_gcp(text: &str, names: &mut Interner) -> Result<Vec<(IpNet, ServiceRange)>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct File {
        prefixes: Vec<Entry>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        ipv4_prefix: Option<String>,
        ipv6_prefix: Option<String>,
        service: String,
        #[serde(default)]
        scope: String,
    }
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a cloud.json file ({e})"))?;
    file.prefixes
        .into_iter()
        .map(|e| {
            let p = e
                .ipv4_prefix
                .or(e.ipv6_prefix)
                .ok_or_else(|| "an entry has neither ipv4Prefix nor ipv6Prefix".to_string())?;
            Ok((
                prefix(&p)?,
                ServiceRange {
                    service: names.get(e.service.trim()),
                    region: names.region(&e.scope),
                },
            ))
        })
        .collect()
}

fn parse_csv(text: &str, names: &mut Interner) -> Result<Vec<(IpNet, ServiceRange)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("line {}: {e}", i + 1))?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let field = |n: usize| record.get(n).unwrap_or("");
        if i == 0 && field(0).eq_ignore_ascii_case("cidr") {
            continue; // a header row
        }
        if record.len() < 2 || record.len() > 3 || field(1).is_empty() {
            return Err(format!("line {line}: expected cidr,service[,region]"));
        }
        let p = prefix(field(0)).map_err(|e| format!("line {line}: {e}"))?;
        out.push((
            p,
            ServiceRange {
                service: names.get(field(1)),
                region: names.region(field(2)),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The real file's shape: top-level metadata, AMAZON entries overlapping specific services,
    /// GLOBAL regions, and IPv6.
    pub(crate) const AWS_SAMPLE: &str = r#"{
  "syncToken": "1732579385",
  "createDate": "2024-11-26-00-03-05",
  "prefixes": [
    { "ip_prefix": "52.95.0.0/16", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1" },
    { "ip_prefix": "52.95.128.0/21", "region": "us-east-1", "service": "S3", "network_border_group": "us-east-1" },
    { "ip_prefix": "52.95.128.0/21", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1" },
    { "ip_prefix": "3.218.180.0/22", "region": "us-east-1", "service": "DYNAMODB", "network_border_group": "us-east-1" },
    { "ip_prefix": "13.32.0.0/15", "region": "GLOBAL", "service": "CLOUDFRONT", "network_border_group": "GLOBAL" }
  ],
  "ipv6_prefixes": [
    { "ipv6_prefix": "2600:1f18::/33", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1" },
    { "ipv6_prefix": "2600:1fa0:80::/40", "region": "us-east-1", "service": "S3", "network_border_group": "us-east-1" }
  ]
}"#;

    fn table(format: ListFormat, text: &str) -> ServiceTable {
        let mut t = ServiceTable::default();
        for (p, r) in parse(format, text).expect("parses") {
            t.insert(p, r);
        }
        t
    }

    fn service(t: &ServiceTable, addr: &str) -> Option<(String, Option<String>)> {
        t.lookup(addr.parse().expect("address"))
            .map(|r| (r.service.to_string(), r.region.as_deref().map(str::to_string)))
    }

    #[test]
    fn aws_ip_ranges_name_services_and_regions() {
        let t = table(ListFormat::Aws, AWS_SAMPLE);
        let s3 = Some(("S3".to_string(), Some("us-east-1".to_string())));
        assert_eq!(service(&t, "52.95.128.10"), s3, "the specific service beats AMAZON");
        assert_eq!(
            service(&t, "52.95.1.1"),
            Some(("AMAZON".into(), Some("us-east-1".into()))),
            "only the catch-all covers it"
        );
        assert_eq!(service(&t, "3.218.181.2").map(|s| s.0).as_deref(), Some("DYNAMODB"));
        assert_eq!(
            service(&t, "13.33.0.1"),
            Some(("CLOUDFRONT".into(), None)),
            "GLOBAL is no region"
        );
        assert_eq!(service(&t, "2600:1fa0:80::1"), s3, "IPv6, longest prefix");
        assert_eq!(service(&t, "2600:1f18::1").map(|s| s.0).as_deref(), Some("AMAZON"));
        assert_eq!(service(&t, "8.8.8.8"), None);
    }

    #[test]
    fn the_later_list_wins_an_equal_prefix_and_the_longest_prefix_wins_across_lists() {
        let mut t = table(ListFormat::Aws, AWS_SAMPLE);
        for (p, r) in parse(
            ListFormat::Csv,
            "cidr,service,region\n# ours\n52.95.128.0/21, backup-store\n52.95.128.0/25,vault,eu-1\n",
        )
        .expect("csv")
        {
            t.insert(p, r);
        }
        assert_eq!(service(&t, "52.95.128.1"), Some(("vault".into(), Some("eu-1".into()))));
        assert_eq!(service(&t, "52.95.129.1"), Some(("backup-store".into(), None)));
    }

    #[test]
    fn gcp_cloud_json() {
        let t = table(
            ListFormat::Gcp,
            r#"{"syncToken":"1","creationTime":"2024-11-26T00:00:00","prefixes":[
                {"ipv4Prefix":"34.1.208.0/20","service":"Google Cloud","scope":"africa-south1"},
                {"ipv6Prefix":"2600:1900:8000::/44","service":"Google Cloud","scope":"us-east1"}]}"#,
        );
        assert_eq!(
            service(&t, "34.1.208.9"),
            Some(("Google Cloud".into(), Some("africa-south1".into())))
        );
        assert_eq!(
            service(&t, "2600:1900:8000::9").and_then(|s| s.1).as_deref(),
            Some("us-east1")
        );
    }

    #[test]
    fn malformed_lists_name_the_problem() {
        let err = parse(ListFormat::Aws, "{\"prefixes\": 3}").expect_err("not a list");
        assert!(err.contains("not an ip-ranges.json file"), "{err}");
        let err = parse(
            ListFormat::Aws,
            r#"{"prefixes":[{"ip_prefix":"52.95.0.0/33","region":"r","service":"S3"}]}"#,
        )
        .expect_err("bad prefix");
        assert!(err.contains("\"52.95.0.0/33\" is not a CIDR prefix"), "{err}");
        let err = parse(ListFormat::Csv, "10.0.0.0/8,a\nnot-a-prefix,b\n").expect_err("bad csv row");
        assert!(err.starts_with("line 2:"), "{err}");
        let err = parse(ListFormat::Csv, "10.0.0.0/8\n").expect_err("no service");
        assert!(err.contains("expected cidr,service[,region]"), "{err}");
        let err = parse(ListFormat::Gcp, "[]").expect_err("not cloud.json");
        assert!(err.contains("cloud.json"), "{err}");
    }

    #[test]
    fn load_filters_services_and_reports_unreadable_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ip-ranges.json");
        std::fs::write(&path, AWS_SAMPLE).expect("write");
        let mut t = ServiceTable::default();
        let n = t
            .load(&ServiceListSource {
                path: path.clone(),
                format: ListFormat::Aws,
                services: vec!["S3".into()],
            })
            .expect("loads");
        assert_eq!(n, 2);
        assert_eq!(service(&t, "52.95.1.1"), None, "AMAZON was filtered out");
        let err = t
            .load(&ServiceListSource {
                path: dir.path().join("missing.json"),
                format: ListFormat::Aws,
                services: vec![],
            })
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("missing.json") && err.contains("cannot read"), "{err}");
        assert!(!err.contains('\n'));
    }
}
