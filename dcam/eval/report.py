"""Writing an evaluation report: Markdown + JSON tables, bar charts,
example sheets, per-map rows."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List, Sequence

import numpy as np
from torch import Tensor

from .datasets import EvalRecord
from ..errors import one_line
from ..ops.config import config_changes, describe_changes
from .metrics import object_metrics

METHOD_LABELS = {"diffusion-cam": "Diffusion-CAM", "grad-cam": "Grad-CAM", "llava-cam": "LLaVA-CAM", "tam": "TAM"}

def log(msg: str, verbose: bool) -> None:
    """A progress line of the evaluation on stderr."""
    if verbose:
        print(f"[dcam eval] {msg}", file=sys.stderr, flush=True)


def json_ready(x):
    """JSON-safe copy (NaN/inf -> None, tensors/arrays -> lists)."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (Tensor, np.ndarray)):
        return json_ready(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


#: The arguments of :func:`dcam.eval.evaluate` beside the report's own fields that decide its figures: the counts,
#: the seed of the faithfulness baseline's random order, the sizes (report.json's ``settings``).
RERUN_SETTINGS = ("n", "split", "prompt", "family", "batch_size", "image_size", "seed", "n_examples", "faithfulness",
                  "faith_n", "faith_steps", "faith_fill", "ablation", "sweep", "sweep_n", "sweep_probes",
                  "sweep_layers")


def rerun_record(arguments: Dict[str, Any], command_line) -> Dict[str, Any]:
    """report.json's ``settings`` (:data:`RERUN_SETTINGS` of ``evaluate``'s ``arguments``) and ``provenance``
    (:func:`dcam.provenance.provenance`: versions, machine, and the command when ``command_line`` is given):
    with the report's method, layer, probe, score and config, what reruns it."""
    from ..provenance import provenance

    return {"settings": {k: arguments[k] for k in RERUN_SETTINGS}, "provenance": provenance(command_line)}


def skipped_text(skipped: Sequence, shown: int = 3) -> str:
    """``"4 records skipped: '1' (why), '2' (why), '3' (why) and 1 more"`` of ``(record id, reason)``
    pairs: the count always (the first three alone hid how many of a large data set failed)."""
    n = len(skipped)
    named = ", ".join(f"{str(r)!r} ({one_line(str(why))})" for r, why in skipped[:shown])
    more = f" and {n - shown} more" if n > shown else ""
    return f"{n} record{'s' if n != 1 else ''} skipped: {named}{more}"


def _fmt(v, scale=1.0, digits=2, suffix=""):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v * scale:.{digits}f}{suffix}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


METRIC_HEADER = ["Obj-IoU (%) ↑", "Contrast (x) ↑", "Concentration (%) ↑", "F3 (%) ↑", "mean per-map F3 (%)",
                 "Func-IoU (%) ↑", "object words", "function words"]


def _metric_cells(s: Dict[str, float]) -> List[str]:
    return [_fmt(s.get("obj_iou"), 100), _fmt(s.get("contrast"), 1, 2, "x"), _fmt(s.get("concentration"), 100),
            _fmt(s.get("f3"), 100), _fmt(s.get("f3_per_map"), 100), _fmt(s.get("func_iou"), 100),
            str(s.get("n_obj", 0)), str(s.get("n_func", 0))]


def _label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def _left_out(rows: Dict[str, Dict[str, float]]) -> str:
    """The line under a table that says how many object words each row left out of its means (``n_invalid``:
    their ground truth covers no pixel); the table counts only the words it scored."""
    return ("\nObject words left out (ground truth covers no pixel; `n_invalid`): "
            + ", ".join(f"{_label(k)} {s.get('n_invalid', 0)}" for k, s in rows.items()) + ".\n")


def write_outputs(report: dict, out_dir: str, examples: Sequence[dict] = (), per_map: Sequence[dict] = ()) -> dict:
    """Write the tables (Markdown + JSON), charts, example sheets, per-map
    rows and the report into ``out_dir``; returns their paths (report.json lists them
    relative to its own folder)."""
    os.makedirs(out_dir, exist_ok=True)
    files: Dict[str, Any] = {}
    hooks = (f"layer {report['layer']}, probe `{report['probe']}`, target score `{report['target_score']}`"
             if report.get("layer") is not None else f"probe `{report['probe']}` (no method hooks a layer)")
    # the config moves the numbers (the bundled model's default has grad_relu=False): said in every
    # table, not only in report.json
    config = (f" Diffusion-CAM config: {describe_changes(config_changes(report['config']))}."
              if report.get("config") is not None else "")
    head = (f"Data set: {report['dataset']} ({report['records']} records, {len(report['skipped'])} skipped). "
            f"Every method: {hooks}.{config}\n\n")

    def write(name, text, obj):
        p_md, p_js = os.path.join(out_dir, name + ".md"), os.path.join(out_dir, name + ".json")
        with open(p_md, "w") as f:
            f.write(text)
        with open(p_js, "w") as f:
            json.dump(json_ready(obj), f, indent=2)
        files[name] = [p_md, p_js]

    rows = [[_label(m)] + _metric_cells(s) for m, s in report["main"].items()]
    write("main_table", "## Comparison\n\n" + head + markdown_table(["Method"] + METRIC_HEADER, rows)
          + _left_out(report["main"]), {"header": head.strip(), "config": report.get("config"), "rows": report["main"]})
    if "ablation" in report:
        rows = [[k] + _metric_cells(s) for k, s in report["ablation"].items()]
        write("ablation_table", "## Ablation (Diffusion-CAM)\n\n" + head
              + "Every row refines the same raw maps; `baseline` has every module off, `+X` only X on, "
              + "`full` all on (SICD reference), the last row all on with SICD context.\n\n"
              + markdown_table(["Variant"] + METRIC_HEADER, rows) + _left_out(report["ablation"]),
              {"header": head.strip(), "config": report.get("config"), "rows": report["ablation"]})
    if "sweep" in report:
        rows = []
        for r in report["sweep"]:
            if "error" in r:
                rows.append([str(r.get("probe")), str(r.get("layer"))] + ["n/a"] * 6 + [r["error"]])
            else:
                notes = [f"{len(r['skipped'])} record(s) skipped (report.json)"] if r.get("skipped") else []
                if r.get("n_invalid"):
                    notes.append(f"{r['n_invalid']} object word(s) left out (ground truth covers no pixel)")
                note = "; ".join(notes)
                rows.append([r["probe"], str(r["layer"])] + _metric_cells(r)[:6] + [note])
        write("sweep_table", "## Diffusion-CAM over probe modes and layers\n\n"
              + f"Data set: {report['dataset']}, first {report['sweep'][0].get('records', 0) if report['sweep'] else 0} "
              + f"records, target score `{report['target_score']}`.{config}\n\n"
              + markdown_table(["Probe", "Layer"] + METRIC_HEADER[:6] + ["note"], rows),
              {"config": report.get("config"), "rows": report["sweep"]})
    if "faithfulness" in report:
        fa = report["faithfulness"]
        rows = [[_label(m), _fmt(v["deletion_auc"], 1, 4), _fmt(v["insertion_auc"], 1, 4),
                 _fmt(v["insertion_minus_deletion"], 1, 4), str(v["words"])] for m, v in fa["methods"].items()]
        fill = "each image's mean colour (fill `mean`)" if isinstance(fa["fill"], str) else \
            f"the colour `rgb({', '.join(f'{v:g}' for v in fa['fill'])})`"  # (what was used, not what mean is)
        write("faithfulness_table", "## Causal faithfulness (deletion / insertion)\n\n"
              + f"First {fa['records']} records; grid cells blanked with {fill}, {fa['steps']} steps; probability "
              + "of the word's token, "
              + f"probe `{fa['probe']}`. Deletion AUC lower is better, insertion AUC higher is better.\n\n"
              + markdown_table(["Method", "Deletion AUC ↓", "Insertion AUC ↑", "Ins − Del ↑", "words"], rows), fa)
    files["bars"] = _bar_chart(report["main"], os.path.join(out_dir, "bars.png"), "Comparison")
    if "ablation" in report:
        files["ablation_bars"] = _bar_chart(report["ablation"], os.path.join(out_dir, "ablation_bars.png"),
                                            "Ablation (Diffusion-CAM)")
    files["examples"] = [_example_sheet(ex, os.path.join(out_dir, "examples", f"example_{k:02d}.png"))
                         for k, ex in enumerate(examples)]
    p = os.path.join(out_dir, "per_map.jsonl")
    with open(p, "w") as f:
        for r in per_map:
            f.write(json.dumps(json_ready(r)) + "\n")
    files["per_map"] = p
    files["report"] = os.path.join(out_dir, "report.json")

    def relative(v):  # the folder may be written under a temporary name and moved (dcam eval), or moved later
        return [relative(x) for x in v] if isinstance(v, list) else os.path.relpath(v, out_dir)
    with open(files["report"], "w") as f:
        json.dump(json_ready({**report, "files": {k: relative(v) for k, v in files.items()}}), f, indent=2)
    return files


def _bar_chart(rows: Dict[str, Dict[str, float]], path: str, title: str) -> str:
    import matplotlib

    from ..render.fonts import figure_fonts, readable

    # method names and the title in any script: the fonts dcam's pictures use (DejaVu Sans alone drew CJK as boxes)
    labels = [readable(_label(n)) for n in rows]
    title = readable(title)
    with matplotlib.rc_context(figure_fonts(labels + [title])):
        return _draw_bar_chart(rows, labels, path, title)


def _draw_bar_chart(rows: Dict[str, Dict[str, float]], labels: List[str], path: str, title: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure  # (pyplot's backend is the caller's: matplotlib.use switched it)

    names = list(rows)
    panels = [("obj_iou", "Obj-IoU (%)", 100), ("contrast", "Contrast (x)", 1),
              ("concentration", "Concentration (%)", 100), ("f3", "F3 (%)", 100)]
    fig = Figure(figsize=(3.2 * 4, 3.6))
    axes = fig.subplots(1, 4)
    colours = matplotlib.colormaps["tab10"](np.arange(len(names)) % 10)
    for ax, (k, lab, sc) in zip(axes, panels):
        vals = [rows[n].get(k) for n in names]
        vals = [v * sc if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else 0.0 for v in vals]
        ax.bar(range(len(names)), vals, color=colours)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8, parse_math=False)
        ax.set_title(lab, fontsize=10)
        for x, v in enumerate(vals):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _example_sheet(ex: dict, path: str) -> str:
    import matplotlib

    from ..render.fonts import figure_fonts, readable

    rec: EvalRecord = ex["record"]
    methods = list(ex["maps"])
    words = [i for i in rec.object_indices if all(i in ex["maps"][m] for m in methods)][:6]
    # words, captions and ids in any script: the fonts dcam's pictures use (DejaVu Sans alone drew CJK as boxes)
    texts = {"title": readable(f"{rec.record_id}: {rec.caption}"), "methods": [readable(_label(m)) for m in methods],
             "words": {i: readable(rec.words[i]) for i in words}}
    with matplotlib.rc_context(figure_fonts([texts["title"], *texts["methods"], *texts["words"].values()])):
        return _draw_example_sheet(ex, rec, methods, words, texts, path)


def _draw_example_sheet(ex: dict, rec: EvalRecord, methods: List[str], words: List[int], texts: dict,
                        path: str) -> str:
    from matplotlib.figure import Figure  # (pyplot's backend is the caller's: matplotlib.use switched it)

    from ..render.overlay import overlay

    os.makedirs(os.path.dirname(path), exist_ok=True)
    nr, nc = max(1, len(words)), 1 + len(methods)
    fig = Figure(figsize=(2.2 * nc, 2.3 * nr))
    axes = fig.subplots(nr, nc, squeeze=False)
    for r in range(nr):
        ax = axes[r][0]
        ax.imshow(np.asarray(rec.image))
        if words:
            truth = rec.word_truth(words[r])
            gt = truth.any(axis=0) if truth.ndim == 3 else truth > 0  # (its objects' union)
            ax.contour(gt.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_ylabel(texts["words"][words[r]], fontsize=10, parse_math=False)
        if r == 0:
            ax.set_title("image + GT", fontsize=9)
        for c, m in enumerate(methods, start=1):
            ax = axes[r][c]
            if words:
                mp = ex["maps"][m][words[r]]
                ax.imshow(np.asarray(overlay(rec.image, mp, alpha=0.5)))
                res = object_metrics(mp[None], [rec.word_truth(words[r])])
                ax.set_xlabel(f"IoU {100 * res['obj_iou'][0].item():.0f}  F3 {100 * res['f3'][0].item():.0f}",
                              fontsize=8)
            if r == 0:
                ax.set_title(texts["methods"][c - 1], fontsize=9, parse_math=False)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    # captions, words and ids are data, drawn as written: matplotlib reads "$...$" as maths
    # (a caption "worth $x_$" raised its parse error and lost the whole evaluation)
    fig.suptitle(texts["title"], fontsize=9, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
