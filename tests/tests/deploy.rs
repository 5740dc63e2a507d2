//! The deployment artefacts, checked offline as part of the suite: the container build file
//! (hadolint), the Kubernetes manifests (kubernetes-validate, and the paygate.toml they carry
//! against the gateway's own settings), and the Terraform for AWS (python-hcl2, formatting,
//! checkov with paygate's custom checks for the audit buckets' Object Lock). Each script also
//! runs its checks on known-bad fixtures and fails unless they are caught, so a check that
//! cannot fail fails here.

use std::path::Path;
use std::process::Command;

fn run(script: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("tests/python").join(script))
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

#[test]
fn the_container_build_file_and_the_kubernetes_manifests_pass_their_checks() {
    let text = run("check_deploy.py");
    assert!(text.contains("deploy: Dockerfile hadolint clean"), "{text}");
}

#[test]
fn the_terraform_parses_is_formatted_and_passes_checkov_with_the_object_lock_checks() {
    let text = run("check_terraform.py");
    assert!(
        text.contains("terraform checks: ok") && text.contains("failed 0"),
        "{text}"
    );
}
