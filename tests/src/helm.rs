//! Real Helm for the chart tests: Helm's Go library through helm-sdkpy (PyPI), in a
//! virtualenv made once by `tests/helm/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn python() -> PathBuf {
    let script = crate::manifest_dir().join("helm/setup.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("helm/setup.sh runs");
    assert!(out.status.success(), "tests/helm/setup.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim().lines().last().unwrap())
}

fn script() -> PathBuf {
    crate::manifest_dir().join("helm/helm.py")
}

/// What `helm lint` found: the number of errors and every message's (severity, path).
#[derive(Debug)]
pub struct Lint {
    pub errors: u64,
    pub messages: Vec<(u64, String)>,
}

pub fn lint(chart: &Path) -> Lint {
    let out = Command::new(python()).arg(script()).arg("lint").arg(chart).output().expect("helm.py runs");
    assert!(out.status.success(), "helm lint could not run: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lint prints JSON");
    Lint {
        errors: v["errors"].as_u64().unwrap(),
        messages: v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["severity"].as_u64().unwrap_or(0), m["path"].as_str().unwrap_or("").to_string()))
            .collect(),
    }
}

/// `helm install` into the cluster of `kubeconfig`, not waiting for pods.
pub fn install(
    kubeconfig: &Path,
    namespace: &str,
    release: &str,
    chart: &Path,
    values: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    release_action("install", kubeconfig, namespace, release, chart, values)
}

/// `helm upgrade` of a release, not waiting for pods.
pub fn upgrade(
    kubeconfig: &Path,
    namespace: &str,
    release: &str,
    chart: &Path,
    values: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    release_action("upgrade", kubeconfig, namespace, release, chart, values)
}

fn release_action(
    action: &str,
    kubeconfig: &Path,
    namespace: &str,
    release: &str,
    chart: &Path,
    values: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(values).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(script())
        .arg(action)
        .arg(kubeconfig)
        .args([namespace, release])
        .arg(chart)
        .arg(file.path())
        .output()
        .expect("helm.py runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

/// `base` with `over` laid on top, maps merged key by key (as Helm merges values files).
pub fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A copy of the chart whose values.yaml is `values` (helm lint reads the chart's own).
pub fn chart_with_values(chart: &Path, values: &serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(chart.file_name().unwrap());
    copy_dir(chart, &dest);
    std::fs::write(dest.join("values.yaml"), serde_yaml::to_string(values).unwrap()).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
