//! The Grafana dashboard in k8s/observability: it parses, every query is valid PromQL (checked
//! by promtool, which `scripts/test` installs with Debian's prometheus package), and it shows
//! every metric the two binaries export.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_path_buf()
}

/// Every query of every panel.
fn queries() -> Vec<String> {
    let path = repo().join("k8s/observability/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard file"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets").iter())
        .map(|target| target["expr"].as_str().expect("an expr").to_owned())
        .collect()
}

/// The metric names a `metrics.rs` declares (`pub const X: &str = "name";`).
fn declared_metrics(file: &str) -> Vec<String> {
    std::fs::read_to_string(repo().join(file))
        .expect("the metrics module")
        .lines()
        .filter(|line| line.starts_with("pub const ") && line.contains(": &str = \""))
        .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool has no expression checker of its own: each query becomes a recording rule.
    let rules: String = queries()
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            format!(
                "      - record: dashboard:query_{i}\n        expr: '{}'\n",
                expr.replace('\'', "''")
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!(
        "identity-dashboard-{}.rules.yml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .expect("writes the rules");
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (scripts/test installs Debian's prometheus package)");
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn the_dashboard_shows_every_exported_metric() {
    let queries = queries().join("\n");
    let declared: Vec<String> = [
        "identity-server/src/metrics.rs",
        "outbox-relay/src/metrics.rs",
    ]
    .iter()
    .flat_map(|file| declared_metrics(file))
    .collect();
    assert!(declared.len() > 10, "{declared:?}");
    let missing: Vec<&String> = declared
        .iter()
        .filter(|name| !queries.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
