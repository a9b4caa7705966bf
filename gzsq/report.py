"""The end-of-run report in three forms: report.json (everything), report.md (tables), and a
self-contained report.html (tables plus plots embedded as PNG data URIs: accuracy per format,
FP32 vs int8 latency per runtime, per-tensor ranges, a grid of distilled images)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from gzsq.fileio import write_atomic, write_json_atomic
from gzsq.verify import headline


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _score(row: dict, who: str) -> float | None:
    """The headline quality number of one evaluation row for fp32/int8/simulated."""
    if row["metric"] == "psnr":
        return row.get(f"{who}_psnr_db")
    if f"{who}_top1_pct" in row:
        return row[f"{who}_top1_pct"]
    return 100.0 if who == "fp32" else row.get(f"{who}_top1_agreement_pct")


def _score_label(row: dict) -> str:
    if row["metric"] == "psnr":
        return "PSNR (dB)"
    return "top-1 (%)" if "int8_top1_pct" in row else "top-1 agreement with FP32 (%)"


def summarise(report: dict) -> str:
    head = f"gzsq {report['model']}  method={report['method']} seed={report['seed']}"
    if "distill_s" in report["timings_s"]:  # `gzsq run`; `gzsq verify` distils nothing
        head += f"  distill {report['timings_s']['distill_s']:.1f}s, peak {report['distill_peak_rss_mb']:.0f} MB"
    lines = [head]
    for fmt, a in report["artifacts"].items():
        lines.append(f"  {fmt}: {a['path']} in {a['runtime']}  ({a['scheme']})")
        for row in a["evaluations"]:
            label = _score_label(row)
            parity = f"runtime = simulation on {row['runtime_vs_simulation_agreement_pct']:.2f}% of top-1"
            if "output_error_steps_max" in row:
                parity += f", max output error {row['output_error_steps_max']:.1f} steps"
            lines.append(f"    {row['source']} ({row['images']}): {label} fp32 {_fmt(_score(row, 'fp32'))}, "
                         f"int8 {_fmt(_score(row, 'int8'))} (simulated {_fmt(_score(row, 'simulated'))}), "
                         f"SNR {row['output_snr_db']:.1f} dB; {parity}")
        layers = a.get("per_layer")
        if layers:
            first = layers["first_divergent_tensor"]
            scope = "" if layers["complete"] else " (scan stopped at its time budget)"
            lines.append(f"    per-layer: {layers['tensors_compared']} tensors compared{scope}; "
                         + (f"first divergent tensor: {first}" if first else "no tensor diverges from the simulation"))
        dev = a.get("device")
        if dev:
            quality = f", top-1 {dev['top1_pct']:.2f}%" if "top1_pct" in dev else ""
            lines.append(f"    on {dev['target']} ({dev['machine']}, {dev['images']} images): top-1 agreement with this host "
                         f"{dev['top1_agreement_with_host_pct']:.2f}%{quality}, max output difference "
                         f"{dev['max_abs_output_difference']:.3g}"
                         + (f" ({dev['max_output_difference_steps']:.0f} output steps)" if dev.get("max_output_difference_steps") else "")
                         + f"; latency p50 {dev['latency_p50_ms']:.2f} ms "
                         f"[{dev['latency_kind']}]")
        lat = a.get("latency_batch1")
        if lat:
            lines.append(f"    latency batch 1, {lat['threads']} thread(s): fp32 {lat['fp32_p50_ms']:.2f} ms, "
                         f"int8 {lat['int8_p50_ms']:.2f} ms (×{lat['int8_over_fp32']:.2f}); "
                         f"size {a['fp32_size_bytes'] / 1e6:.2f} → {a['size_bytes'] / 1e6:.2f} MB")
        if "gate" in a:
            g = a["gate"]
            lines.append(f"    gate: drop {g['drop']:.2f} {g['unit']} {'≤' if g['passed'] else '>'} {g['max_drop']} "
                         f"→ {'pass' if g['passed'] else 'FAIL'}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    out = [f"# gzsq report: {report['model']}", "",
           f"- method `{report['method']}`, seed {report['seed']}, estimator `{report['calibration']['estimator']}`",
           f"- model sha256 `{report['model_sha256'][:16]}…`, input {report['input_shape']}, gzsq {report['gzsq_version']}",
           f"- machine: {report['machine']['platform']}", ""]
    if "gate" in report:
        g = report["gate"]
        out += [f"**Release gate `--max-drop {g['max_drop']}`: {'PASSED' if g['passed'] else 'FAILED'}**"
                + ("" if g["passed"] else " — " + "; ".join(g["failures"])), ""]
    out += ["## Accuracy and parity", "",
            "| format | runtime | data | images | metric | FP32 | int8 | simulated | SNR dB | cosine | runtime=sim top-1 % | max err (steps) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, a in report["artifacts"].items():
        for row in a["evaluations"]:
            out.append(f"| {fmt} | {a['runtime']} | {row['source']} | {row['images']} | {_score_label(row)} | "
                       f"{_fmt(_score(row, 'fp32'))} | {_fmt(_score(row, 'int8'))} | {_fmt(_score(row, 'simulated'))} | "
                       f"{row['output_snr_db']:.1f} | {row['output_cosine']:.4f} | "
                       f"{row['runtime_vs_simulation_agreement_pct']:.2f} | {_fmt(row.get('output_error_steps_max'), 1)} |")
    out += ["", "## Latency (batch 1) and size", "",
            "| format | runtime | threads | FP32 p50 ms | int8 p50 ms | int8 p90 ms | int8/FP32 | FP32 MB | int8 MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for fmt, a in report["artifacts"].items():
        lat = a.get("latency_batch1")
        if lat:
            out.append(f"| {fmt} | {lat['runtime']} | {lat['threads']} | {lat['fp32_p50_ms']:.2f} | {lat['int8_p50_ms']:.2f} | "
                       f"{lat['int8_p90_ms']:.2f} | {lat['int8_over_fp32']:.2f} | {a['fp32_size_bytes'] / 1e6:.2f} | "
                       f"{a['size_bytes'] / 1e6:.2f} |")
    out += ["", "## Per-layer parity (runtime vs simulation, in quantization steps)", ""]
    for fmt, a in report["artifacts"].items():
        layers = a.get("per_layer")
        if not layers:
            continue
        first = layers["first_divergent_tensor"]
        out.append(f"- **{fmt}**: {layers['tensors_compared']} tensors compared; "
                   + (f"first divergent tensor `{first}`" if first else "none diverges") + f" ({layers['rule']})")
        worst = sorted(layers["tensors"], key=lambda r: -r["max_steps"])[:5]
        if worst:
            out.append("  - largest: " + ", ".join(f"`{r['tensor']}` max {r['max_steps']:.0f} / "
                                                 f"{r['over_one_step_pct']:.1f}% > 1 step" for r in worst))
    devices = [(fmt, a["device"]) for fmt, a in report["artifacts"].items() if a.get("device")]
    if devices:
        out += ["", "## On the device", "",
                "| format | target | machine | images | top-1 agreement with host % | top-1 % | max output diff | p50 ms | latency |",
                "|---|---|---|---|---|---|---|---|---|"]
        for fmt, d in devices:
            out.append(f"| {fmt} | {d['target']} | {d['machine']} | {d['images']} | {d['top1_agreement_with_host_pct']:.2f} | "
                       f"{_fmt(d.get('top1_pct'))} | {d['max_abs_output_difference']:.3g} | {d['latency_p50_ms']:.2f} | "
                       f"{d['latency_kind']} |")
    out += ["", "## Quantization schemes", ""]
    for fmt, a in report["artifacts"].items():
        out.append(f"- **{fmt}**: {a['scheme']}")
    if report.get("timings_s"):
        out += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in report["timings_s"].items())]
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict, images: np.ndarray | None, ranges: dict | None) -> dict[str, str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    plots = {}
    fmts = list(report["artifacts"])
    rows = [headline(report["artifacts"][f]) for f in fmts]
    if fmts and all(rows):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.27
        for k, who in enumerate(("fp32", "int8", "simulated")):
            ax.bar(np.arange(len(fmts)) + (k - 1) * width, [_score(r, who) or 0 for r in rows], width, label=who)
        ax.set_xticks(np.arange(len(fmts)), fmts)
        ax.set_ylabel(_score_label(rows[0]))
        ax.set_title(f"accuracy per format ({rows[0]['source']})")
        low = min((_score(r, w) or 0) for r in rows for w in ("fp32", "int8", "simulated"))
        ax.set_ylim(max(0, low - 5), None)
        ax.legend(fontsize=8)
        plots["accuracy"] = _png(fig)
        plt.close(fig)
    lats = [(f, report["artifacts"][f].get("latency_batch1")) for f in fmts]
    lats = [(f, lat) for f, lat in lats if lat]
    if lats:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = np.arange(len(lats))
        ax.bar(x - 0.2, [lat["fp32_p50_ms"] for _, lat in lats], 0.4, label="FP32")
        ax.bar(x + 0.2, [lat["int8_p50_ms"] for _, lat in lats], 0.4, label="int8")
        ax.set_xticks(x, [f"{f}\n{lat['runtime']}" for f, lat in lats], fontsize=8)
        ax.set_ylabel("p50 latency, batch 1 (ms)")
        ax.set_title("FP32 vs int8 latency per runtime")
        ax.legend(fontsize=8)
        plots["latency"] = _png(fig)
        plt.close(fig)
    if ranges:
        names = list(ranges["tensors"])[:120]
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.09 * len(names) + 1)))
        lo = [ranges["tensors"][n]["min"] for n in names]
        hi = [ranges["tensors"][n]["max"] for n in names]
        y = np.arange(len(names))
        ax.hlines(y, lo, hi, lw=2)
        ax.set_yticks(y, names, fontsize=5)
        ax.invert_yaxis()
        ax.set_xlabel("activation range [min, max]")
        ax.set_title(f"per-tensor ranges ({ranges['calibration']['estimator']}, first {len(names)} tensors)")
        plots["ranges"] = _png(fig)
        plt.close(fig)
    if images is not None and len(images):
        grid = images[:16]
        cols = min(8, len(grid))
        rows_n = int(np.ceil(len(grid) / cols))
        fig, axes = plt.subplots(rows_n, cols, figsize=(cols * 1.1, rows_n * 1.1))
        for ax, img in zip(np.atleast_1d(axes).ravel(), grid):
            pic = np.moveaxis(img, 0, -1) if img.ndim == 3 else img
            pic = (pic - pic.min()) / max(float(pic.max() - pic.min()), 1e-8)
            ax.imshow(pic.squeeze(), cmap="gray" if pic.shape[-1] == 1 or pic.ndim == 2 else None)
        for ax in np.atleast_1d(axes).ravel():
            ax.axis("off")
        fig.suptitle("distilled calibration images", fontsize=9)
        plots["images"] = _png(fig)
        plt.close(fig)
    return plots


def _html(report: dict, images, ranges) -> str:
    md = markdown(report)
    body = [f"<h1>gzsq report: {html.escape(report['model'])}</h1>"]
    tables = _md_tables_to_html(md)
    plots = _plots(report, images, ranges)
    captions = {"accuracy": "Accuracy per format", "latency": "FP32 vs int8 latency per runtime",
                "ranges": "Per-tensor activation ranges", "images": "Distilled calibration images"}
    body.append(tables)
    for key, caption in captions.items():
        if key in plots:
            body.append(f'<figure id="plot-{key}"><img alt="{caption}" src="{plots[key]}"><figcaption>{caption}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}th{background:#f3f3f3}figure{margin:1.5em 0}"
             ".fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}")
    # Marks each decoded plot with its pixel size: lets a headless browser prove the plots render.
    script = ("<script>window.addEventListener('load',function(){document.querySelectorAll('figure img').forEach("
              "function(i){i.setAttribute('data-rendered',i.naturalWidth+'x'+i.naturalHeight)})})</script>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gzsq report: {html.escape(report['model'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}{script}</body></html>\n")


def _md_tables_to_html(md: str) -> str:
    """The markdown report as HTML: headings, bullet lists, bold lines and pipe tables."""
    out, table = [], []

    def flush():
        if table:
            head, *rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-")]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
            table.clear()

    for line in md.splitlines()[1:]:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            out.append(f"<p>• {html.escape(line[2:]).replace('`', '')}</p>")
        elif line.startswith("**"):
            cls = "pass" if "PASSED" in line else "fail"
            out.append(f"<p class='{cls}'>{html.escape(line.strip('*').replace('**', ''))}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def write_reports(report: dict, out_dir: str | Path, calibration=None, ranges: dict | None = None) -> None:
    out = Path(out_dir)
    write_json_atomic(out / "report.json", report)
    write_atomic(out / "report.md", lambda p: p.write_text(markdown(report)))
    images = calibration.images if calibration is not None else None
    write_atomic(out / "report.html", lambda p: p.write_text(_html(report, images, ranges)))

