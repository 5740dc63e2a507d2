#!/usr/bin/env python3
"""Offline checks of terraform/: no AWS account, no provider download, no network (once checkov
is installed).

1. Every .tf, .tfvars and .tfbackend file parses with python-hcl2.
2. Formatting: what `terraform fmt` produces. With a terraform binary on PATH,
   `terraform fmt -check -recursive`; always, a check of our own (no tabs, no CR, no trailing
   blanks, a final newline, 2-space indentation, `=` aligned in runs of one-line attributes).
3. checkov over terraform/ with the custom checks of terraform/checks, once per environment's
   tfvars: no failed check, and every skip carries its reason in the code
   (`#checkov:skip=CKV_...:reason`), and no skip comment is left that skips nothing.
4. The custom checks can fail: on terraform/checks/fixtures (GOVERNANCE mode, 30 days, an audit
   bucket without Object Lock) and on the real tree with audit_retention_days = 30, each one
   must report the failures listed in EXPECTED_FIXTURE_FAILURES / the retention check.

checkov is pinned in tests/python/requirements-checkov.txt and runs from its own virtualenv
(default target/checkov-venv, made on first use; PAYGATE_CHECKOV_PYTHON names another
interpreter): its pins (boto3 1.35, packaging 23) and its bc-python-hcl2, which installs the
same `hcl2` module as python-hcl2, would otherwise clash with the test suite's packages.

Usage: python3 tests/python/check_terraform.py [--no-install]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
CHECKS = TERRAFORM / "checks"
FIXTURES = CHECKS / "fixtures"
ENVIRONMENTS = ["production", "non-production"]
CHECKOV_REQUIREMENTS = ROOT / "tests" / "python" / "requirements-checkov.txt"
DEFAULT_VENV = ROOT / "target" / "checkov-venv"

CUSTOM_CHECKS = ["CKV_PAYGATE_1", "CKV_PAYGATE_2", "CKV_PAYGATE_3", "CKV2_PAYGATE_4"]
# (check id, resource) pairs the negative fixture must fail.
EXPECTED_FIXTURE_FAILURES = {
    ("CKV_PAYGATE_1", "aws_s3_bucket_object_lock_configuration.weak_audit"),
    ("CKV_PAYGATE_2", "aws_s3_bucket_object_lock_configuration.weak_audit"),
    ("CKV_PAYGATE_2", "aws_s3_bucket_object_lock_configuration.short_years"),
    ("CKV_PAYGATE_3", "aws_s3_bucket.unlocked_audit"),
    ("CKV2_PAYGATE_4", "aws_s3_bucket.unlocked_audit"),
}
# The Object Lock configurations of the real tree, which a too-short retention must fail.
LOCKED_BUCKET_MODULES = ["audit_bucket", "witness_bucket", "cloudtrail_bucket"]

SKIP_COMMENT = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


class Failure(Exception):
    pass


# ---- 1. parse ------------------------------------------------------------------------------


def hcl_files() -> list[Path]:
    files = []
    for pattern in ("*.tf", "*.tfvars", "*.tfbackend"):
        files.extend(TERRAFORM.rglob(pattern))
    return sorted(p for p in files if ".terraform" not in p.parts)


def parse_all(files: list[Path]) -> list[str]:
    try:
        import hcl2  # python-hcl2 (tests/python/requirements.txt)
    except ImportError as error:
        raise Failure(
            "python-hcl2 is missing: python3 -m pip install -r tests/python/requirements.txt"
        ) from error
    errors = []
    for path in files:
        try:
            with path.open() as handle:
                hcl2.load(handle)
        except Exception as error:  # the parser raises lark errors of several kinds
            errors.append(f"{path.relative_to(ROOT)}: does not parse: {error}")
    return errors


# ---- 2. format -----------------------------------------------------------------------------

ATTRIBUTE = re.compile(r'^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*|"[^"]*")(?P<gap> *)=(?!=)')


def _balanced(text: str) -> bool:
    """Whether the brackets opened on a line close on it (strings skipped roughly)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
    return depth == 0


def format_problems(path: Path) -> list[str]:
    """What terraform fmt would change, as far as these rules see it."""
    raw = path.read_bytes()
    name = path.relative_to(ROOT)
    problems = []
    if b"\r" in raw:
        problems.append(f"{name}: carriage returns (use LF line ends)")
    text = raw.decode("utf-8")
    if text and not text.endswith("\n"):
        problems.append(f"{name}: no newline at the end")
    if text.endswith("\n\n"):
        problems.append(f"{name}: blank lines at the end")
    lines = text.split("\n")
    heredoc = None
    for number, line in enumerate(lines, start=1):
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if "\t" in line:
            problems.append(f"{name}:{number}: tab")
        if line != line.rstrip(" "):
            problems.append(f"{name}:{number}: trailing blanks")
        indent = len(line) - len(line.lstrip(" "))
        if line.strip() and indent % 2:
            problems.append(f"{name}:{number}: indentation of {indent} (2 spaces a level)")
        match = ATTRIBUTE.match(line)
        if match and not match.group("gap"):
            problems.append(f"{name}:{number}: no space before '='")
        start = re.search(r"<<-?([A-Z_]+)\s*$", line)
        if start:
            heredoc = start.group(1)
    # In a run of one-line attributes at one indentation, '=' sits one space after the longest key.
    problems.extend(_padding_problems(name, lines))
    return problems


def _padding_problems(name, lines) -> list[str]:
    problems = []
    run: list[tuple[int, int, int]] = []  # (line number, key end, column)
    indent_of_run = None

    def close():
        if run:
            longest = max(key_end for _, key_end, _ in run)
            for number, _, column in run:
                if column != longest + 1:
                    problems.append(f"{name}:{number}: '=' not one space after the longest key of its run")
        run.clear()

    heredoc = None
    for number, line in enumerate(lines, start=1):
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        start = re.search(r"<<-?([A-Z_]+)\s*$", line)
        match = ATTRIBUTE.match(line)
        if match and _balanced(line) and not start:
            indent = len(match.group("indent"))
            if indent != indent_of_run:
                close()
                indent_of_run = indent
            key_end = indent + len(match.group("key"))
            run.append((number, key_end, key_end + len(match.group("gap"))))
            continue
        close()
        indent_of_run = None
        if start:
            heredoc = start.group(1)
    close()
    return problems


def check_format(files: list[Path]) -> tuple[list[str], str]:
    problems = []
    for path in files:
        problems.extend(format_problems(path))
    how = "own format rules"
    terraform = shutil.which("terraform")
    if terraform:
        result = subprocess.run(
            [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"},
        )
        if result.returncode != 0:
            problems.append("terraform fmt -check would change:\n" + result.stdout.strip())
        how = "terraform fmt -check and own format rules"
    return problems, how


# ---- 3. and 4. checkov ---------------------------------------------------------------------


def checkov_python(install: bool) -> str:
    named = os.environ.get("PAYGATE_CHECKOV_PYTHON")
    if named:
        return named
    probe = subprocess.run([sys.executable, "-c", "import checkov"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    python = DEFAULT_VENV / "bin" / "python"
    ready = python.exists() and subprocess.run(
        [str(python), "-c", "import checkov"], capture_output=True
    ).returncode == 0
    if not ready:
        if not install:
            raise Failure(f"checkov is not installed in {DEFAULT_VENV} (run without --no-install)")
        print(f"installing checkov into {DEFAULT_VENV.relative_to(ROOT)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", str(CHECKOV_REQUIREMENTS)],
            check=True,
        )
    return str(python)


def run_checkov(python: str, directory: Path, extra: list[str]) -> dict:
    command = [
        python, "-m", "checkov.main",
        "-d", str(directory.relative_to(ROOT)),
        "--external-checks-dir", str(CHECKS.relative_to(ROOT)),
        "--framework", "terraform",
        "--compact",  # not --quiet: the JSON report must list the passed and skipped checks too
        "--skip-download",  # no Prisma Cloud metadata: offline
        "-o", "json",
        *extra,
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode not in (0, 1):
        raise Failure(f"checkov failed to run ({result.returncode}):\n{result.stderr[-3000:]}")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise Failure(f"checkov printed no JSON report:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}") from error
    if isinstance(report, list):  # one report per framework
        report = next(r for r in report if r.get("check_type") == "terraform")
    if "results" not in report:  # nothing scanned: checkov prints an empty summary
        report = {"results": {}, "summary": report}
    for key in ("passed_checks", "failed_checks", "skipped_checks"):
        report["results"].setdefault(key, [])
    return report


def skip_comments() -> list[tuple[str, int, str, str]]:
    """(file relative to terraform/, line, check id, reason) of every skip comment in the code."""
    found = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        if FIXTURES in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = SKIP_COMMENT.search(line)
            if match:
                found.append((str(path.relative_to(TERRAFORM)), number, match.group(1),
                              (match.group(2) or "").strip()))
    return found


def check_environment(python: str, environment: str, problems: list[str]) -> dict:
    var_file = TERRAFORM / "environments" / f"{environment}.tfvars"
    report = run_checkov(
        python, TERRAFORM,
        ["--skip-path", str(FIXTURES.relative_to(ROOT)), "--var-file", str(var_file.relative_to(ROOT))],
    )
    results = report["results"]
    summary = report["summary"]
    if summary.get("parsing_errors"):
        problems.append(f"checkov ({environment}): {summary['parsing_errors']} files failed to parse")
    for failed in results["failed_checks"]:
        problems.append(
            f"checkov ({environment}): {failed['check_id']} {failed['check_name']} FAILED for "
            f"{failed['resource']} ({failed['file_path']}:{failed['file_line_range'][0]})"
        )
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
        if not reason.strip() or reason.strip() == "No comment provided":
            problems.append(f"checkov ({environment}): {skipped['check_id']} skipped without a reason "
                            f"for {skipped['resource']}")
    passed_custom = {c["check_id"] for c in results["passed_checks"]} & set(CUSTOM_CHECKS)
    if passed_custom != set(CUSTOM_CHECKS):
        problems.append(f"checkov ({environment}): custom checks did not run: "
                        f"{sorted(set(CUSTOM_CHECKS) - passed_custom)}")
    return report


def check_skips_used(reports: list[dict], problems: list[str]) -> list[tuple[str, str, str]]:
    """Every skip comment skips something; returns (check id, file:line, reason) of each."""
    used = set()
    for report in reports:
        for skipped in report["results"]["skipped_checks"]:
            used.add((skipped["file_path"].lstrip("/"), skipped["check_id"]))
    listed = []
    for file, number, check_id, reason in skip_comments():
        if not reason:
            problems.append(f"terraform/{file}:{number}: #checkov:skip={check_id} has no reason")
        if (file, check_id) not in used:
            problems.append(f"terraform/{file}:{number}: #checkov:skip={check_id} skips nothing")
        listed.append((check_id, f"{file}:{number}", reason))
    return sorted(listed)


def check_custom_checks_fail(python: str, problems: list[str]) -> int:
    """The negative fixture, and the real tree with a too-short retention, must fail."""
    report = run_checkov(python, FIXTURES, ["-c", ",".join(CUSTOM_CHECKS)])
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    for check_id, resource in sorted(EXPECTED_FIXTURE_FAILURES - failed):
        problems.append(f"fixture: {check_id} did not fail for {resource} (a check that cannot fail)")
    for check_id in CUSTOM_CHECKS:
        if not any(c == check_id for c, _ in failed):
            problems.append(f"fixture: {check_id} failed nowhere")
    with tempfile.NamedTemporaryFile("w", suffix=".tfvars", delete=False) as short:
        short.write("audit_retention_days = 30\n")
    try:
        report = run_checkov(
            python, TERRAFORM,
            ["--skip-path", str(FIXTURES.relative_to(ROOT)), "--var-file", short.name,
             "-c", "CKV_PAYGATE_2"],
        )
    finally:
        os.unlink(short.name)
    failed_short = {c["resource"] for c in report["results"]["failed_checks"]}
    for module in LOCKED_BUCKET_MODULES:
        resource = f"module.{module}.aws_s3_bucket_object_lock_configuration.this"
        if resource not in failed_short:
            problems.append(f"audit_retention_days = 30: CKV_PAYGATE_2 did not fail for {resource}")
    return len(failed) + len(failed_short)


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="never create the checkov venv")
    args = parser.parse_args()

    problems: list[str] = []
    files = hcl_files()
    if not files:
        print("terraform: no files found", file=sys.stderr)
        return 1
    try:
        problems.extend(parse_all(files))
        format_issues, format_how = check_format(files)
        problems.extend(format_issues)

        python = checkov_python(install=not args.no_install)
        reports = [check_environment(python, environment, problems) for environment in ENVIRONMENTS]
        skips = check_skips_used(reports, problems)
        negative = check_custom_checks_fail(python, problems)
    except Failure as error:
        problems.append(str(error))
        reports, skips, negative, format_how = [], [], 0, "?"

    counts = []
    for environment, report in zip(ENVIRONMENTS, reports):
        summary = report["summary"]
        counts.append((environment, summary["passed"], summary["failed"], summary["skipped"]))
    if skips:
        print("checkov skips (check, file, reason):")
        for check_id, file, reason in skips:
            print(f"  {check_id}  terraform/{file}: {reason}")
    for environment, report in zip(ENVIRONMENTS, reports):
        by_check = Counter(s["check_id"] for s in report["results"]["skipped_checks"])
        print(f"checkov ({environment}): skipped by check: "
              + ", ".join(f"{k} x{v}" for k, v in sorted(by_check.items())))
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)

    per_env = "; ".join(f"{env}: passed {p}, failed {f}, skipped {s}" for env, p, f, s in counts)
    print(
        f"terraform: {len(files)} files parsed, format checked ({format_how}), "
        f"checkov {per_env} (each skip with a reason); "
        f"custom checks failed {negative} times on the negative inputs, as they must"
    )
    status = "ok" if not problems else f"FAILED ({len(problems)} problems)"
    print(f"terraform checks: {status}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
