"""Plots of one or several session reports, and an HTML page that links them.

Optional: needs the ``plots`` extra (matplotlib). matplotlib is imported inside the functions
and drawn through its Agg canvas directly (no pyplot, no global backend switch), so importing
this module costs nothing and never fails.

``render_plots(reports, out_dir)`` takes loaded JSON reports (``report.build_report``). Several
reports are drawn side by side: the same colour for the same tier and op, one line style per
report. Per scenario it writes three PNGs, per capacity sweep (``capacity.py``) one
capacity-curve PNG, and one ``index.html`` that links them.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from .capacity import curves, plot_curves
from .criteria import format_value
from .judging import STATUS_LABEL
from .metrics import HEADLINE
from .ops import op_order
from .report import format_figure
from .result import scenario_id

PLOTS_MISSING = "plots need matplotlib: pip install 'pytest-kvcache[plots]'"

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = (None, "o", "s", "^", "v", "D")
_OCC_MARKERS = ("o", "s", "^", "D", "v", "x")
_STATUS_CLASS = {"passed": "pass", "pass": "pass", "failed": "fail", "fail": "fail",
                 "error": "fail", "interrupted": "warn", "n/a": "na"}


def plots_available() -> str | None:
    """None when plots can be drawn, else the message saying how to get them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return PLOTS_MISSING
    return None


# --------------------------------------------------------------------------- helpers


def safe_name(text: str) -> str:
    """A file name made only of [A-Za-z0-9._-]: '+' and anything else become '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(text)).strip(".")
    return name or "scenario"


def _mpl(text) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _labels(reports: list[dict], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(reports):
            raise ValueError(f"{len(labels)} labels for {len(reports)} reports")
        out = [str(label) for label in labels]
    else:
        out = [str(r.get("label") or f"report {i + 1}") for i, r in enumerate(reports)]
    seen: dict[str, int] = {}
    unique = []
    for label in out:  # two reports with the same label stay apart
        n = seen.get(label, 0)
        seen[label] = n + 1
        unique.append(label if n == 0 else f"{label} ({n + 1})")
    return unique


def _scenario_names(reports: list[dict]) -> list[str]:
    names: list[str] = []
    for rep in reports:
        for sc in rep.get("scenarios", []):
            if scenario_id(sc) not in names:
                names.append(scenario_id(sc))
    return names


def _find(rep: dict, name: str) -> dict | None:
    for sc in rep.get("scenarios", []):
        if scenario_id(sc) == name:
            return sc
    return None


def _style(i: int, multi: bool) -> dict:
    """Line style of the i-th report."""
    if not multi:
        return {"linestyle": "-"}
    return {"linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[(i // len(_LINESTYLES)) % len(_MARKERS)], "markevery": 0.1}


def _line_label(label: str, what: str, multi: bool) -> str:
    return _mpl(f"{label}: {what}" if multi else what)


# --------------------------------------------------------------------------- figures


def _new_axes(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(_mpl(title), fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    return fig, ax


def _finish(fig, ax, path: Path, drawn: int) -> None:
    if drawn > 5:  # many lines: keep the legend off the data
        fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside right upper")
    elif drawn:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="0.5")
    fig.savefig(path, format="png", metadata={"Software": None})


def _colours(keys: list):
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(keys) <= 10 else colormaps["tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _union(runs: list[tuple[str, dict | None]], pick) -> list:
    """The keys ``pick(summary)`` gives over all runs, each once, in first-seen order."""
    keys: dict = {}
    for _, sc in runs:
        keys.update(dict.fromkeys(pick((sc or {}).get("summary", {}) or {})))
    return list(keys)


def _plot_cdf(name: str, runs: list[tuple[str, dict | None]], path: Path) -> None:
    fig, ax = _new_axes(f"{name}: latency CDF per tier and op", "latency (ms, log scale)",
                        "fraction of operations")
    multi = len(runs) > 1
    keys = _union(runs, lambda s: [(tier, op) for tier, ops in (s.get("tiers") or {}).items() for op in ops])
    keys.sort(key=lambda k: (k[0], op_order(k[1])))
    colours = _colours(keys)
    drawn = 0
    for i, (label, sc) in enumerate(runs):
        tiers = (sc or {}).get("summary", {}).get("tiers", {}) or {}
        for tier, op in keys:
            figs = tiers.get(tier, {}).get(op)
            cdf = (figs or {}).get("latency_cdf_ms") or []
            if not figs or not figs.get("count") or len(cdf) < 2:
                continue
            n = len(cdf)
            pts = [(x, j / (n - 1)) for j, x in enumerate(cdf) if x is not None and x > 0]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[(tier, op)],
                    label=_line_label(label, f"{tier} {op} (n={figs['count']})", multi),
                    linewidth=1.6, **_style(i, multi))
            drawn += 1
    if drawn:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    _finish(fig, ax, path, drawn)


def _plot_throughput(name: str, runs: list[tuple[str, dict | None]], path: Path) -> None:
    fig, ax = _new_axes(f"{name}: throughput over time per tier", "time in window (s)",
                        "GB/s (bytes of data ops' transfers completed)")
    multi = len(runs) > 1
    tiers = _union(runs, lambda s: list(s.get("timeline_bytes") or {}))
    colours = _colours(tiers)
    drawn = 0
    for i, (label, sc) in enumerate(runs):
        s = (sc or {}).get("summary", {})
        step = float(s.get("timeline_step_s") or 1.0)
        window = float(s.get("window_s") or 0.0)
        for tier in tiers:
            values = (s.get("timeline_bytes", {}) or {}).get(tier) or []
            if not values:
                continue
            edges = [k * step for k in range(len(values) + 1)]
            if edges[-2] < window < edges[-1]:  # the window ends inside the last step
                edges[-1] = window
            gbps = [v / (hi - lo) / 1e9 for v, lo, hi in zip(values, edges, edges[1:])]
            style = _style(i, multi)
            style.pop("marker", None)
            style.pop("markevery", None)
            ax.stairs(gbps, edges, color=colours[tier], linewidth=1.6, baseline=None,
                      label=_line_label(label, tier, multi), **style)
            drawn += 1
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    _finish(fig, ax, path, drawn)


def _plot_scaling(name: str, runs: list[tuple[str, dict | None]], path: Path) -> None:
    """Users in the pool and storage GB/s per step of --kv-autoscale (summary.autoscale or
    summary.sla_search): users on the left axis, GB/s on the right."""
    fig, ax = _new_axes(f"{name}: users and storage throughput per step", "step start (s into the run)", "users")
    right = ax.twinx()
    right.set_ylabel("storage GB/s over the step")
    multi = len(runs) > 1
    drawn = 0
    for i, (label, sc) in enumerate(runs):
        s = (sc or {}).get("summary", {})
        steps = (s.get("autoscale") or s.get("sla_search") or {}).get("steps") or []
        if not steps:
            continue
        t = [st["t_s"] for st in steps]
        ax.step(t, [st["users"] for st in steps], where="post", color="C0", marker="o",
                label=_line_label(label, "users", multi), **{k: v for k, v in _style(i, multi).items() if k == "linestyle"})
        right.plot(t, [st["storage_gbps"] for st in steps], color="C1", marker="s",
                   label=_line_label(label, "storage GB/s", multi))
        drawn += 2
    ax.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    if drawn:
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
        ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)
        fig.savefig(path, format="png", metadata={"Software": None})
    else:
        _finish(fig, ax, path, 0)


def _plot_occupancy(name: str, runs: list[tuple[str, dict | None]], path: Path) -> None:
    fig, ax = _new_axes(f"{name}: tier occupancy over time", "time in window (s)", "used (GB)")
    multi = len(runs) > 1
    tiers = []
    for _, sc in runs:
        for sample in (sc or {}).get("summary", {}).get("occupancy_timeline", []) or []:
            for t in sample.get("bytes", {}):
                if t not in tiers:
                    tiers.append(t)
    colours = _colours(tiers)
    drawn = 0
    for i, (label, sc) in enumerate(runs):
        samples = (sc or {}).get("summary", {}).get("occupancy_timeline", []) or []
        for tier in tiers:
            pts = [(p["t_s"], p["bytes"][tier] / 1e9) for p in samples
                   if p.get("t_s") is not None and p.get("bytes", {}).get(tier) is not None]
            if not pts:
                continue
            style = _style(i, multi)
            style["marker"] = _OCC_MARKERS[i % len(_OCC_MARKERS)]
            style["markevery"] = 1 if len(pts) <= 30 else max(1, len(pts) // 10)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[tier], linewidth=1.6,
                    markersize=3.5, label=_line_label(label, tier, multi), **style)
            drawn += 1
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    _finish(fig, ax, path, drawn)


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
.pass { background: #dff3df; color: #14591a; font-weight: 600; }
.fail { background: #f8dcdc; color: #8a1616; font-weight: 600; }
.warn { background: #fbefd0; color: #7a5300; font-weight: 600; }
.na { color: #777; }
.question { color: #555; font-style: italic; margin: .2em 0 .6em; }
.muted { color: #777; }
.figs { display: flex; flex-wrap: wrap; gap: 10px; }
.figs img { width: 100%; max-width: 640px; height: auto; border: 1px solid #ddd; }
ul.problems { color: #8a1616; }
"""


def _cls(status) -> str:
    return _STATUS_CLASS.get(str(status), "na")


def _criteria_counts(sc: dict) -> str:
    crit = sc.get("criteria", []) or []
    if not crit:
        return "none"
    parts = []
    for status in ("pass", "fail", "n/a"):
        n = sum(c.get("status") == status for c in crit)
        if n:
            parts.append(f'<span class="{_cls(status)}">{n} {_e(STATUS_LABEL[status])}</span>')
    return " ".join(parts)


_SUMMARY_FIGURES = ("requests", "storage_tokens_per_sec", "cache_hit_rate", "e2e_p95_ms")
"""Headline figures (``metrics.HEADLINE`` keys) the HTML summary table shows per report."""


def _summary_table(names, labels, reports, anchors) -> list[str]:
    units = {key: (label, unit) for key, label, unit in HEADLINE}
    cols = ("status", *(f"{units[k][0]} ({units[k][1]})" if units[k][1] not in ("", "count") else units[k][0]
                        for k in _SUMMARY_FIGURES), "criteria")
    out = ["<table>", "<thead><tr><th rowspan=\"2\">scenario</th>"]
    out += [f'<th colspan="{len(cols)}">{_e(label)}</th>' for label in labels]
    out.append("</tr><tr>")
    out += [f"<th>{_e(c)}</th>" for _ in labels for c in cols]
    out.append("</tr></thead><tbody>")
    for name in names:
        out.append(f'<tr><td><a href="#{anchors[name]}">{_e(name)}</a></td>')
        for rep in reports:
            sc = _find(rep, name)
            if sc is None:
                out.append(f'<td class="na" colspan="{len(cols)}">not in this report</td>')
                continue
            figures = (sc.get("summary", {}) or {}).get("headline") or {}
            out.append(f'<td class="{_cls(sc.get("status"))}">{_e(sc.get("status", "?"))}</td>')
            out += [f'<td class="num">{_e(format_figure(figures.get(k), units[k][1]))}</td>' for k in _SUMMARY_FIGURES]
            out.append(f'<td class="nowrap">{_criteria_counts(sc)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _criteria_table(name, labels, reports) -> list[str]:
    texts: list[str] = []
    per_report: list[dict] = []
    for rep in reports:
        sc = _find(rep, name) or {}
        by_text = {}
        for c in sc.get("criteria", []) or []:
            text = c.get("criterion", "?")
            by_text[text] = c
            if text not in texts:
                texts.append(text)
        per_report.append(by_text)
    if not texts:
        return ['<p class="muted">No criteria.</p>']
    out = ["<table>", "<thead><tr><th>criterion</th>"]
    out += [f"<th>{_e(label)}</th>" for label in labels]
    out.append("</tr></thead><tbody>")
    for text in texts:
        out.append(f"<tr><td><code>{_e(text)}</code></td>")
        for by_text in per_report:
            c = by_text.get(text)
            if c is None:
                out.append('<td class="na">-</td>')
                continue
            status = c.get("status", "n/a")
            try:
                measured = format_value(c.get("metric", ""), c.get("measured"))
            except Exception:  # an unknown metric in an older report: show it raw
                measured = "-" if c.get("measured") is None else str(c.get("measured"))
            shown = _e(STATUS_LABEL.get(status, status))
            if measured != "-":
                shown += f" ({_e(measured)})"
            out.append(f'<td class="{_cls(status)} nowrap">{shown}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _report_table(labels, reports) -> list[str]:
    out = ["<table>", "<thead><tr><th>report</th><th>created (UTC)</th><th>host</th>"
           "<th>tool</th><th>model</th><th>complete</th><th>scenarios</th></tr></thead><tbody>"]
    for label, rep in zip(labels, reports):
        created = rep.get("created_unix")
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created))
                if isinstance(created, (int, float)) else "-")
        tool = rep.get("tool", {}) or {}
        model = (rep.get("model", {}) or {}).get("name", "-")
        complete = rep.get("complete")
        out.append(
            f"<tr><td>{_e(label)}</td><td>{_e(when)}</td>"
            f"<td>{_e((rep.get('host', {}) or {}).get('node', '-'))}</td>"
            f"<td>{_e(tool.get('name', '-'))} {_e(tool.get('version', ''))}</td>"
            f"<td>{_e(model)}</td>"
            f'<td class="{"pass" if complete else "warn"}">{"yes" if complete else "no"}</td>'
            f'<td class="num">{len(rep.get("scenarios", []) or [])}</td></tr>')
    out.append("</tbody></table>")
    return out


# --------------------------------------------------------------------------- entry point


def render_plots(reports: list[dict], out_dir: Path, labels: list[str] | None = None) -> Path:
    """Write three PNGs per scenario (a fourth, users and GB/s per step, for --kv-autoscale) and ``index.html`` into ``out_dir``; return the index path.

    ``reports``: loaded JSON session reports; several are compared side by side. ``labels``:
    one per report (e.g. the file stems); otherwise each report's ``label`` or "report N".
    """
    if isinstance(reports, dict):
        reports = [reports]
    reports = list(reports)
    if not reports:
        raise ValueError("render_plots needs at least one report")
    labels = _labels(reports, labels)
    missing = plots_available()
    if missing:
        raise ImportError(missing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    names = _scenario_names(reports)
    stems: dict[str, str] = {}
    used: set[str] = set()
    for name in names:  # distinct names that map to the same file name get a number
        stem, n = safe_name(name), 2
        while stem.lower() in used:
            stem, n = f"{safe_name(name)}-{n}", n + 1
        used.add(stem.lower())
        stems[name] = stem

    images: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        runs = [(label, _find(rep, name)) for label, rep in zip(labels, reports)]
        files = []
        for kind, what, draw in (("cdf", "latency CDF per tier and op", _plot_cdf),
                                 ("throughput", "throughput over time per tier", _plot_throughput),
                                 ("occupancy", "tier occupancy over time", _plot_occupancy)):
            fname = f"{stems[name]}-{kind}.png"
            draw(str(name), runs, out_dir / fname)
            files.append((fname, what))
        if any((sc or {}).get("summary", {}).get(key) for _, sc in runs for key in ("autoscale", "sla_search")):
            fname = f"{stems[name]}-scaling.png"
            _plot_scaling(str(name), runs, out_dir / fname)
            files.append((fname, "users and storage throughput per autoscaler step"))
        images[name] = files
    sweeps: dict[str, list[tuple[str, list[dict]]]] = {}
    for label, rep in zip(labels, reports):
        for sweep, points in curves(rep.get("scenarios", []) or []).items():
            sweeps.setdefault(sweep, []).append((label, points))
    for sweep, runs in sweeps.items():
        plot_curves(sweep, runs, out_dir / f"capacity-{safe_name(sweep)}.png")

    title = "pytest-kvcache: " + (labels[0] if len(labels) == 1 else " vs ".join(labels))
    page = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
            f"<h1>{_e(title)}</h1>"]
    page += _report_table(labels, reports)
    page.append("<h2>Scenarios</h2>")
    if names:
        page += _summary_table(names, labels, reports, {n: "sc-" + stems[n] for n in names})
    else:
        page.append('<p class="muted">The reports hold no scenarios.</p>')
    if sweeps:
        page.append("<h2>Capacity curves</h2>")
        page += [f'<a href="capacity-{_e(safe_name(s))}.png"><img src="capacity-{_e(safe_name(s))}.png" '
                 f'alt="capacity curve {_e(s)}" width="640" height="360"></a>' for s in sweeps]
    for name in names:
        page.append(f'<h2 id="sc-{stems[name]}">{_e(name)}</h2>')
        first = next((sc for rep in reports if (sc := _find(rep, name))), {})
        if first.get("question"):
            page.append(f'<p class="question">{_e(first["question"])}</p>')
        tiers = [f"{_e(label)}: {_e(' > '.join(map(str, sc.get('tiers', []))))}"
                 for label, rep in zip(labels, reports) if (sc := _find(rep, name))]
        page.append(f'<p class="muted">tiers {"; ".join(tiers)}</p>')
        problems = [f"{label}: {p}" for label, rep in zip(labels, reports)
                    if (sc := _find(rep, name))
                    for p in (sc.get("errors") or []) + (sc.get("invariant_problems") or [])]
        if problems:
            page.append('<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in problems)
                        + "</ul>")
        page += _criteria_table(name, labels, reports)
        page.append('<div class="figs">')
        for fname, what in images[name]:
            page.append(f'<a href="{_e(fname)}"><img src="{_e(fname)}" '
                        f'alt="{_e(name)}: {_e(what)}" width="640" height="360"></a>')
        page.append("</div>")
    page += ["</body>", "</html>", ""]
    index = out_dir / "index.html"
    index.write_text("\n".join(page), encoding="utf-8")
    return index
