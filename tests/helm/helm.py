"""Helm's own library (through helm-sdkpy) for the chart tests.

    helm.py lint CHART_DIR
        prints {"errors": N, "messages": [{"severity": S, "path": P}, ...]}
        (severity 1 info, 2 warning, 3 error; helm-sdkpy drops the message texts)
    helm.py install|upgrade KUBECONFIG NAMESPACE RELEASE CHART_DIR VALUES_JSON
        installs (or upgrades) without waiting for pods (no kubelet runs in the test
        cluster) and prints the release as JSON; exits 1 with Helm's error on failure.
"""

import asyncio
import json
import sys

import helm_sdkpy as helm


def lint(chart: str) -> int:
    result = asyncio.run(helm.Lint(helm.Configuration()).run(chart))
    messages = [{"severity": m.get("Severity"), "path": m.get("Path")} for m in result.get("Messages") or []]
    errors = sum(1 for m in messages if (m["severity"] or 0) >= 3) + len(result.get("Errors") or [])
    print(json.dumps({"errors": errors, "messages": messages}))
    return 0


def install(kubeconfig: str, namespace: str, release: str, chart: str, values_json: str, upgrade: bool = False) -> int:
    with open(values_json) as f:
        values = json.load(f)
    cfg = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    try:
        if upgrade:
            rel = asyncio.run(helm.Upgrade(cfg).run(release, chart, values=values, wait=False, timeout=120))
        else:
            rel = asyncio.run(helm.Install(cfg).run(release, chart, values=values, create_namespace=True, wait=False, timeout=120))
    except helm.HelmError as e:
        print(f"helm {'upgrade' if upgrade else 'install'} failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rel, default=str))
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "lint":
        sys.exit(lint(*args))
    sys.exit(install(*args, upgrade=(cmd == "upgrade")))
