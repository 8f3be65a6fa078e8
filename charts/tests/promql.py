"""A small PromQL scanner for the dashboard and alert checks: which metric names, matcher
labels and grouping labels an expression uses. Not a parser: enough for the expressions the
chart ships, and strict (an identifier it cannot place is reported as a metric name)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "day_of_month", "day_of_week", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "max_over_time",
    "min_over_time", "minute", "month", "predict_linear", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}

_GRAFANA_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*")


@dataclass
class Scan:
    metrics: dict[str, set[str]] = field(default_factory=dict)  # name -> matcher labels
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    unknown_functions: set[str] = field(default_factory=set)


def scan(expr: str) -> Scan:
    out = Scan()
    # Grafana variables: inside strings they vanish with the strings; elsewhere ($near,
    # [$__rate_interval]) they stand for a number or a duration.
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("1", text)
    text = _RANGE.sub("", text)
    for m in _GROUPING.finditer(text):
        out.grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)

    def selector(m: re.Match[str]) -> str:
        name = m.group(1)
        labels = {label for label, _ in _MATCHER.findall(m.group(2))}
        if name and name not in FUNCTIONS | KEYWORDS:
            out.metrics.setdefault(name, set()).update(labels)
            return " "
        return (name or "") + " "

    text = _SELECTOR.sub(selector, text)
    for m in _TOKEN.finditer(text):
        token = m.group(0)
        if token[0].isdigit():
            continue
        follows = text[m.end():].lstrip()
        if token.lower() in KEYWORDS:
            continue
        if follows.startswith("("):
            (out.functions if token in FUNCTIONS else out.unknown_functions).add(token)
        else:
            out.metrics.setdefault(token, set())
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


def grafana_query(query: str) -> tuple[str, str | None]:
    """A Grafana variable query: (the PromQL inside, the label it reads or None)."""
    m = _LABEL_VALUES.match(query)
    if m:
        return m.group("expr"), m.group("label")
    return query, None
