"""Writes deploy/kubernetes/prometheusrule.yaml, the PrometheusRule of prometheus-operator,
from alerts/replwatch.rules.yml, so the two never drift.

    python deploy/generate_prometheusrule.py          # (re)write the PrometheusRule
    python deploy/generate_prometheusrule.py --check  # exit 1 when the committed file differs

The rules file's text (its groups, comments and all; not its header comment) is indented
under `spec:`: the PrometheusRule's spec.groups is the rules file's groups, the same YAML.
tests/test_deploy.py checks the committed file against this output, that its spec parses to
the rules file's data, and its rules with promtool.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "replwatch.rules.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
RUN = "deploy/generate_prometheusrule.py"

HEADER = """\
# GENERATED from alerts/replwatch.rules.yml by deploy/generate_prometheusrule.py: do not
# edit; change the rules file and run `python deploy/generate_prometheusrule.py`.
# prometheus-operator loads these rules into the Prometheus servers whose ruleSelector
# matches the labels below: add the labels yours asks for (kube-prometheus-stack:
# release: <its release>). The alerts expect replwatch's scrape job to be named
# replwatch… (podmonitor.yaml and servicemonitor.yaml set job="replwatch").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: replwatch
  labels:
    app.kubernetes.io/name: replwatch
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest for the rules file's text."""
    lines = rules_text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].startswith("#")):
        start += 1  # the rules file's header comment is about the file, not the rules
    body = "".join("  " + line if line.strip() else "\n" for line in lines[start:])
    manifest = HEADER + body
    if yaml.safe_load(manifest)["spec"] != yaml.safe_load(rules_text):
        raise ValueError(f"{RULES}: its text does not indent into the same YAML under spec:")
    return manifest


def main(argv: list[str]) -> int:
    text = render(RULES.read_text(encoding="utf-8"))
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python {RUN}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
