//! Bad input never panics: the configuration loader (file and `FLOWTEL_*` variables, then the
//! export settings and the resources and monitors built from it) and the prefix-list parsers
//! get 10,000 generated inputs each. Every one must give `Ok` or a one-line error.
//!
//! Inputs are generated two ways: random text, and well-formed documents with every real key
//! (taken from the defaults, so new keys are covered without editing this file) set to random
//! values of random types, which gets past the parsers into validation.
use std::io::Write;

use flowtel::config::Config;
use flowtel::enrich::service_lists::{parse, ListFormat};
use flowtel::enrich::Enricher;
use proptest::prelude::*;
use serde_json::Value as Json;

const CASES: u32 = 10_000;

/// Every leaf key of the default configuration, dotted ("export.otlp.timeout_ms").
fn config_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &Json, out: &mut Vec<String>) {
        match value {
            Json::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    let mut keys = Vec::new();
    walk("", &defaults, &mut keys);
    // tables whose keys are the user's: a network by CIDR, a monitor, a service list
    keys.extend(
        [
            "resources.networks.\"10.0.0.0/8\".subnet",
            "resources.networks.\"10.0.0.0/8\".zone",
            "resources.networks.\"fd00::/8\".vpc",
            "resources.networks.\"300.1.2.3/40\".subnet",
            "export.otlp.headers.x-api-key",
        ]
        .map(String::from),
    );
    keys
}

/// A TOML value of any type, as text.
fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        ".{0,24}".prop_map(|s| serde_json::to_string(&s).expect("string")),
        prop::sample::select(vec![
            "\"grpc\"",
            "\"http/protobuf\"",
            "\"delta\"",
            "\"cumulative\"",
            "\"explicit\"",
            "\"auto\"",
            "\"aws\"",
            "\"everywhere\"",
            "\"10.0.0.0/8\"",
            "\"::/0\"",
            "\"127.0.0.1:0\"",
            "\"/nonexistent/file\"",
            "\"\"",
        ])
        .prop_map(String::from),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// A configuration file: random text, or real keys with random values (and, sometimes,
/// monitors).
fn config_text() -> impl Strategy<Value = String> {
    let keys = config_keys();
    let assignment = (prop::sample::select(keys), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"));
    let monitor = (
        "[a-z-]{0,6}",
        prop::sample::select(vec!["subnet", "vpc", "zone", "cidr", "region", "service", "bogus"]),
        toml_value(),
    )
        .prop_map(|(name, selector, value)| {
            format!(
                "[[monitors]]\nname = \"{name}\"\nlocal = [{{ {selector} = {value} }}]\nremote = [\"everywhere\"]\n"
            )
        });
    prop_oneof![
        1 => any::<String>(),
        1 => "[\\[\\]a-z_.=\"0-9 \n{},#-]{0,200}",
        6 => (prop::collection::vec(assignment, 0..8), prop::collection::vec(monitor, 0..2))
            .prop_map(|(lines, monitors)| format!("{}\n{}", lines.join("\n"), monitors.join("\n"))),
    ]
}

/// `FLOWTEL_*` variables: real keys with random text.
fn config_env() -> impl Strategy<Value = Vec<(String, String)>> {
    let keys = config_keys();
    prop::collection::vec(
        (prop::sample::select(keys), ".{0,16}").prop_map(|(k, v)| {
            (
                format!("FLOWTEL_{}", k.replace('.', "__").replace('"', "").to_uppercase()),
                v,
            )
        }),
        0..3,
    )
}

fn assert_one_line(error: &str) -> Result<(), TestCaseError> {
    prop_assert!(!error.trim().is_empty(), "an empty error");
    prop_assert!(!error.contains('\n'), "a multi-line error: {error}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_config_loader_gives_ok_or_a_one_line_error(text in config_text(), env in config_env()) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        match Config::load(Some(file.path()), env) {
            Err(e) => assert_one_line(&format!("{e:#}"))?,
            Ok(config) => {
                if let Err(e) = config.export_config(|_| None) {
                    assert_one_line(&e.to_string())?;
                }
                if let Err(e) = Enricher::new(&config.resources, None, &config.monitors) {
                    assert_one_line(&e.to_string())?;
                }
            }
        }
    }

    #[test]
    fn the_prefix_list_parsers_give_ok_or_a_one_line_error(
        format in prop::sample::select(vec![ListFormat::Aws, ListFormat::Gcp, ListFormat::Csv]),
        text in prefix_list_text(),
    ) {
        if let Err(e) = parse(format, &text) {
            assert_one_line(&e)?;
        }
    }
}

/// A prefix list: random text, or a well-formed AWS / Google / CSV document with random
/// prefixes, services and regions.
fn prefix_list_text() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, len)| format!("{}.{}.{}.{}/{len}", a[0], a[1], a[2], a[3])),
        (any::<[u16; 8]>(), 0u8..140).prop_map(|(a, len)| {
            let groups: Vec<String> = a.iter().map(|g| format!("{g:x}")).collect();
            format!("{}/{len}", groups.join(":"))
        }),
        ".{0,20}",
    ];
    let field = prop_oneof![".{0,12}", Just("AMAZON".to_string()), Just("GLOBAL".to_string())];
    let entry = (prefix, field.clone(), field);
    let entries = prop::collection::vec(entry, 0..6);
    prop_oneof![
        1 => any::<String>(),
        3 => entries.clone().prop_map(|entries| {
            let prefixes: Vec<Json> = entries
                .into_iter()
                .map(|(p, service, region)| {
                    let key = if p.contains(':') { "ipv6_prefix" } else { "ip_prefix" };
                    serde_json::json!({ key: p, "service": service, "region": region })
                })
                .collect();
            serde_json::json!({ "syncToken": "1", "prefixes": prefixes }).to_string()
        }),
        3 => entries.clone().prop_map(|entries| {
            let prefixes: Vec<Json> = entries
                .into_iter()
                .map(|(p, service, scope)| {
                    let key = if p.contains(':') { "ipv6Prefix" } else { "ipv4Prefix" };
                    serde_json::json!({ key: p, "service": service, "scope": scope })
                })
                .collect();
            serde_json::json!({ "prefixes": prefixes }).to_string()
        }),
        3 => entries.prop_map(|entries| {
            entries
                .into_iter()
                .map(|(p, service, region)| format!("{p},{service},{region}\n"))
                .collect::<String>()
        }),
    ]
}
