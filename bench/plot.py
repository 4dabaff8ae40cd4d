"""Figure 7 as a table and a picture: wall time against fleet size, per tool.

    .venv/bench-peers/matplotlib/bin/python bench/plot.py bench/results.json bench/fleet-sizes.png

``bench/run.py`` calls this under the matplotlib venv that ``make bench``
installs (``.venv/bench-peers/matplotlib``): matplotlib is never a dependency
of ours, and this file imports it only to draw. What it draws, `pivot`
builds from results.json's rows (their ``tags``), with nothing but the
standard library, so the bench and the tests use the same code.
"""

import json
import sys
from pathlib import Path

#: The name of the baseline everywhere in figure 7.
BASELINE = "ThreadingGroup script"
#: Our verbs (thick lines in the plot); ``status-default`` is status at the fleet's default ``parallel``.
OURS = ("dispatch", "status", "status-default")
#: One fixed colour and marker per tool, so that plots of two runs compare at a glance.
STYLES = {
    "threading-group": {"color": "black", "marker": "o", "linestyle": "--"},
    "dispatch": {"color": "#d62728", "marker": "s"},
    "status": {"color": "#ff7f0e", "marker": "D"},
    "status-default": {"color": "#ff7f0e", "marker": "d", "linestyle": ":"},
    "pyinfra": {"color": "#1f77b4", "marker": "^"},
    "pyinfra-default": {"color": "#1f77b4", "marker": "^", "linestyle": ":"},
    "parallel-ssh": {"color": "#9467bd", "marker": "v"},
    "openssh": {"color": "#2ca02c", "marker": "<"},
    "ansible": {"color": "#8c564b", "marker": ">"},
    "pdsh": {"color": "#17becf", "marker": "P"},
    "clush": {"color": "#7f7f7f", "marker": "X"},
    "asyncssh": {"color": "#e377c2", "marker": "*"},
}


def pivot(figures):
    """Figure 7's rows (results.json dicts) as ``{"sizes": [...], "tools": [...]}``.

    Each tool: ``{"key", "label", "points": {hosts: point}}``, the bare
    ThreadingGroup script first (from the rows' baseline), then the tools in
    the order the rows name them. A point is ``{"seconds": median, "min",
    "max", "ratio": median of the paired ratios, "n"}``, or ``{"error": why}``.
    """
    rows = [row for row in figures if row.get("tags", {}).get("hosts")]
    sizes = sorted({row["tags"]["hosts"] for row in rows})
    tools = {"threading-group": {"key": "threading-group", "label": BASELINE, "points": {}}}
    for row in rows:
        tags, hosts = row["tags"], row["tags"]["hosts"]
        tool = tools.setdefault(tags["tool"], {"key": tags["tool"], "label": tags["label"], "points": {}})
        base = row.get("baseline")
        if base and hosts not in tools["threading-group"]["points"]:
            tools["threading-group"]["points"][hosts] = {"seconds": base["median"], "min": base["min"],
                                                         "max": base["max"], "ratio": 1.0, "n": base["n"]}
        if row.get("error") or not row.get("ours"):
            tool["points"][hosts] = {"error": row.get("error") or row.get("absent") or "not measured"}
            continue
        ours = row["ours"]
        tool["points"][hosts] = {"seconds": ours["median"], "min": ours["min"], "max": ours["max"],
                                 "ratio": row["ratio"]["median"] if row.get("ratio") else None, "n": ours["n"]}
    if not tools["threading-group"]["points"]:
        del tools["threading-group"]
    return {"sizes": sizes, "tools": list(tools.values())}


def cell(point):
    """One table cell: ``1.42x (1.23 s)``, ``1x (0.8 s)`` for the baseline, or what went wrong."""
    if point is None:
        return "-"
    if "error" in point:
        return "not installed" if "not installed" in point["error"] else "error"
    ratio = "-" if point["ratio"] is None else f"{point['ratio']:.2f}x"
    return f"{ratio} ({point['seconds']:.2f} s)"


def table_rows(table):
    """``[tool, cell per size...]`` for each tool, for a text or Markdown table."""
    return [[tool["label"], *(cell(tool["points"].get(n)) for n in table["sizes"])] for tool in table["tools"]]


def headers(table):
    return ["TOOL", *(f"{n} hosts" for n in table["sizes"])]


def markdown(table):
    """The table as Markdown, for the README."""
    lines = ["| " + " | ".join(headers(table)) + " |", "|" + "---|" * (len(table["sizes"]) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(table)]
    return "\n".join(lines)


def series(table):
    """What the plot draws: per measured tool, ``{key, label, sizes, medians, lows, highs, ratios, failed}``.

    Fastest first, by the ratio to the baseline at the largest size the tool
    was measured at (ratios compare across sizes; a tool that failed at the
    largest size keeps its place). `failed` lists the sizes it has no point at.
    """
    out = []
    for tool in table["tools"]:
        points = [(n, p) for n, p in sorted(tool["points"].items()) if "error" not in p]
        if points:
            out.append({"key": tool["key"], "label": tool["label"], "sizes": [n for n, _ in points],
                        "medians": [p["seconds"] for _, p in points], "lows": [p["min"] for _, p in points],
                        "highs": [p["max"] for _, p in points],
                        "ratios": [p["ratio"] if p["ratio"] is not None else 1.0 for _, p in points],
                        "failed": sorted(n for n, p in tool["points"].items() if "error" in p)})
    return sorted(out, key=lambda s: (s["ratios"][-1], s["label"]))


def legend_label(line):
    """``pdsh: 1.12x, 7.96 s at 512`` (and the sizes it failed at, if any)."""
    text = f"{line['label']}: {line['ratios'][-1]:.2f}x, {line['medians'][-1]:.2f} s at {line['sizes'][-1]}"
    if line["failed"]:
        text += f" (failed at {', '.join(map(str, line['failed']))})"
    return text


def missing(table):
    """Labels of the tools that have no measured point at all (not installed, or failed)."""
    return [tool["label"] for tool in table["tools"] if all("error" in p for p in tool["points"].values())]


def draw(table, out, subtitle=""):
    """Write the PNG: wall time (log) against fleet size (log), one line per tool, min-max as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for line in series(table):
        style = STYLES.get(line["key"], {"color": "gray", "marker": "o"})
        medians = line["medians"]
        errors = [[m - lo for m, lo in zip(medians, line["lows"])], [hi - m for m, hi in zip(medians, line["highs"])]]
        ax.errorbar(line["sizes"], medians, yerr=errors, capsize=3, markersize=5,
                    label=legend_label(line),
                    linewidth=2.6 if line["key"] in OURS else 1.5, linestyle=style.get("linestyle", "-"),
                    color=style["color"], marker=style["marker"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(table["sizes"]))
    ax.xaxis.set_minor_locator(NullLocator())
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("fleet size (hosts)")
    ax.set_ylabel("wall time, seconds (median, min-max bars; log scale)")
    ax.set_title("Run one command on every host: whole process, cold connections")
    if subtitle:
        fig.text(0.5, 0.005, subtitle, ha="center", va="bottom", fontsize=8, color="dimgray", wrap=True)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", title="slowest first: ratio to the ThreadingGroup script, and median, at the largest size",
              title_fontsize=8)
    absent = missing(table)
    if absent:
        ax.text(0.99, 0.01, "not measured: " + ", ".join(absent), transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="firebrick")
    fig.tight_layout(rect=(0, 0.04 if subtitle else 0, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def main(argv):
    results_path, out = Path(argv[0]), Path(argv[1])
    results = json.loads(results_path.read_text())
    table = pivot(results["figures"])
    if not table["tools"]:
        sys.exit("plot: results have no figure 7 rows")
    machine = results.get("machine", {})
    subtitle = (f"127.0.0.1 sim hosts (one sshd, one user each) on a {machine.get('cpus', '?')}-CPU machine; "
                f"{results.get('started', '')}; ours runs a stand-in PicoClaw task / status probe, the others 'true'")
    draw(table, out, subtitle)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
