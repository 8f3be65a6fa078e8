"""Rendering the vidgate chart offline with Helm's own engine (helm-python-sdk: Helm's Go SDK
as a shared library, no `helm` binary, no cluster, no chart repository)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "vidgate"
PRODUCTION_VALUES = CHART_DIR / "ci" / "production-values.yaml"
METRICS_RS = REPO / "src" / "metrics.rs"
RELEASE = "vidgate"
NAMESPACE = "vidgate"

# Kubernetes versions the manifests are validated against: the chart's minimum and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ("1.30.0", "1.37.0")

# Custom resources of the Prometheus Operator: kubernetes-validate has no schema for them and
# none is vendored here, so they are NOT schema-checked; test_manifests.py checks their
# structure (selectors, ports, secret references, expressions) by hand instead.
NOT_SCHEMA_CHECKED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


@functools.lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART_DIR))


@functools.lru_cache(maxsize=1)
def _production_values() -> str:
    return PRODUCTION_VALUES.read_text()


def production_values() -> dict[str, Any]:
    return yaml.safe_load(_production_values())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Rendered:
    """One offline render: the manifests by template and as parsed objects."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = files.get(f"{RELEASE}/templates/NOTES.txt", "")
        self.objects: list[dict[str, Any]] = []
        for name, text in sorted(files.items()):
            if name.endswith("NOTES.txt") or not text.strip():
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("metadata", {})
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def toml(self) -> str:
        return self.one("ConfigMap", RELEASE)["data"]["vidgate.toml"]


def render(values: dict[str, Any] | None = None, **opts: Any) -> Rendered:
    """Render with the chart's defaults overridden by `values` (schema checked, as an install)."""
    files = chart().render(
        values=values or {},
        name=opts.get("name", RELEASE),
        namespace=opts.get("namespace", NAMESPACE),
        is_install=True,
    )
    return Rendered(files)


def render_error(values: dict[str, Any]) -> str:
    """The error message of a render that must fail."""
    try:
        render(values)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"render succeeded with {json.dumps(values)}")


# --- metric names the gateway really exports -----------------------------------------------

_METRIC = re.compile(
    r'(?P<ctor>counter|float_counter|gauge|histogram|Opts::new|IntCounter::new)\(\s*(?:&r,\s*)?'
    r'"(?P<name>vidgate_[a-z0-9_]+)",\s*"[^"]*"\s*\)?\s*(?:,\s*&\[(?P<labels>[^\]]*)\])?'
)


@functools.lru_cache(maxsize=1)
def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name src/metrics.rs registers (histograms expanded to _bucket/_sum/_count),
    with its label names. Parsed from the source so the test needs no build of the gateway."""
    source = METRICS_RS.read_text()
    series: dict[str, frozenset[str]] = {}
    for m in _METRIC.finditer(source):
        labels = frozenset(re.findall(r'"([a-z_]+)"', m.group("labels") or ""))
        name = m.group("name")
        if m.group("ctor") == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    if "ProcessCollector" in source:
        # The prometheus crate's process collector (feature "process", Linux).
        for name in (
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_threads",
        ):
            series[name] = frozenset()
    return series


# Labels Prometheus attaches to every scraped series (Prometheus Operator target labels).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})


def vidgate_binary() -> Path:
    """The gateway binary for `check-config` (scripts/test builds it before the chart step)."""
    path = Path(os.environ.get("VIDGATE_BIN", REPO / "target" / "debug" / "vidgate"))
    assert path.exists(), f"{path} missing: run `cargo build` first (scripts/test does) or set VIDGATE_BIN"
    return path
