#!/usr/bin/env python3
"""Draws proxy.sh's table as an SVG chart for README: requests/s of each proxy relative to
nginx's in the same run (one group of bars a row), and memory per idle connection (log scale).

    misc/bench/proxy.sh 6 | tee run.md
    misc/bench/chart.py run.md misc/bench/proxy-chart.svg "run of 2026-12-01 17:06"
"""
import math
import sys

COLORS = {"rood": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1971c2", "caddy": "#868e96"}


def parse(path):
    """The table's proxies, its rows of (title, {proxy: req/s}) and the idle row {proxy: bytes}."""
    lines = [l.strip() for l in open(path) if l.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    proxies = [c[: -len(" req/s")] for c in header if c.endswith(" req/s") and "/" not in c[:-6]]
    rows, idle = [], {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        title, values = cells[0], cells[1:]
        by_proxy = {p: float(values[2 * i]) for i, p in enumerate(proxies)}
        if title.startswith("RSS per idle connection"):
            idle = by_proxy
        else:
            rows.append((title, by_proxy))
    return proxies, rows, idle


def text(x, y, s, size=12, anchor="middle", weight="normal", fill="#212529"):
    s = s.replace("&", "&amp;").replace("<", "&lt;")
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}" font-family="sans-serif">{s}</text>')


def main():
    source, out, title = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
    proxies, rows, idle = parse(source)
    width, height = 900, 380
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">', f'<rect width="{width}" height="{height}" fill="white"/>']
    svg.append(text(width / 2, 22, f"rood, nginx, HAProxy, Caddy on one 2-core machine ({title})", 14, weight="bold"))

    # Left: requests/s relative to nginx, per row.
    left, top, plot_w, plot_h = 60, 60, 470, 250
    top_ratio = max(1.5, max(r[p] / r["nginx"] for _, r in rows for p in proxies) * 1.1)
    svg.append(text(left + plot_w / 2, 46, "requests/s relative to nginx (same run, medians)", 12))
    for tick in [0, 0.5, 1.0, 1.5]:
        if tick > top_ratio:
            continue
        y = top + plot_h - tick / top_ratio * plot_h
        color = "#495057" if tick == 1.0 else "#dee2e6"
        svg.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{color}"/>')
        svg.append(text(left - 6, y + 4, f"{tick:.1f}x", 11, anchor="end"))
    group_w = plot_w / len(rows)
    bar_w = (group_w - 30) / len(proxies)
    for g, (row_title, by_proxy) in enumerate(rows):
        x0 = left + g * group_w + 15
        for i, p in enumerate(proxies):
            ratio = by_proxy[p] / by_proxy["nginx"]
            h = ratio / top_ratio * plot_h
            x = x0 + i * bar_w
            svg.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 3:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS.get(p, "#adb5bd")}"/>')
            svg.append(text(x + (bar_w - 3) / 2, top + plot_h - h - 4, f"{ratio:.2f}", 10))
        label = row_title.replace("new TLS handshake per request", "new TLS handshakes")
        svg.append(text(x0 + (group_w - 30) / 2, top + plot_h + 18, label, 11))

    # Right: bytes per idle connection, log scale (values at or below 1 drawn at 1).
    left2, plot_w2 = 610, 260
    svg.append(text(left2 + plot_w2 / 2, 46, "memory per idle connection (bytes, log)", 12))
    top_bytes = max(max(idle.values()), 10)
    decades = math.ceil(math.log10(top_bytes))
    bar_h = plot_h / (len(proxies) + 1)
    for d in range(decades + 1):
        x = left2 + d / decades * plot_w2
        svg.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#dee2e6"/>')
        svg.append(text(x, top + plot_h + 18, f"{10 ** d:,}", 10))
    for i, p in enumerate(proxies):
        value = idle.get(p, 0)
        w = math.log10(max(value, 1)) / decades * plot_w2
        y = top + (i + 0.5) * bar_h
        svg.append(f'<rect x="{left2}" y="{y:.1f}" width="{max(w, 1.5):.1f}" height="{bar_h * 0.6:.1f}" '
                   f'fill="{COLORS.get(p, "#adb5bd")}"/>')
        svg.append(text(left2 - 6, y + bar_h * 0.45, p, 11, anchor="end"))
        svg.append(text(left2 + max(w, 1.5) + 4, y + bar_h * 0.45, f"{value:,.0f}", 10, anchor="start"))

    # Legend.
    for i, p in enumerate(proxies):
        x = left + i * 110
        svg.append(f'<rect x="{x}" y="{height - 26}" width="12" height="12" fill="{COLORS.get(p, "#adb5bd")}"/>')
        svg.append(text(x + 18, height - 16, p, 12, anchor="start"))
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
