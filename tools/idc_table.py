"""Print the accuracy tables of a `tools/reproduce_idc.sh` run, read from its evaluation reports.

Usage: python tools/idc_table.py [WORK_DIR]   (default: idc-run)

Reads every ``*/patch_report.json`` (``wsiheat evaluate patches``), every ``*_slides/slide_report.json``
with its ``*_froc/froc_report.json`` sibling (``evaluate slides`` / ``evaluate froc`` on one folder of
heatmaps) and every ``*/tune_report.json`` (``evaluate tune``, e.g. the pooled test sets: the default
setting and the lesion scorer), and prints them as markdown tables to set beside the README's
"Measured accuracy on real tissue".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wsiheat.postprocess.lesions import SMOOTH_SIGMA


def _load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _ci(ci: dict | None) -> str:
    """' [low, high]' of a bootstrap interval, or '' (reports written before intervals existed)."""
    return "" if not ci else f" [{ci['low']:.3f}, {ci['high']:.3f}]"


def patch_rows(work: Path) -> list[str]:
    """One markdown row per ``evaluate patches`` report under `work`."""
    rows = []
    for path in sorted(work.glob("*/patch_report.json")):
        r = _load(path)
        at = r["at_0.5"]
        rows.append(
            f"| {path.parent.name} | {Path(r['model']).name} | {'yes' if r.get('tta') else 'no'} "
            f"| {r['n']} ({r['n_tumor']} tumor) | {_fmt(r['auc'])}{_ci((r.get('ci') or {}).get('auc'))} "
            f"| {_fmt(at['balanced_accuracy'])}{_ci((r.get('ci') or {}).get('balanced_accuracy'))} "
            f"| {_fmt(at['sensitivity'])} | {_fmt(at['specificity'])} |"
        )
    return rows


def slide_rows(work: Path) -> list[str]:
    """One markdown row per heatmap folder evaluated by ``evaluate slides`` (and ``froc`` when run)."""
    rows = []
    for path in sorted(work.glob("*_slides/slide_report.json")):
        s = _load(path)
        stem = path.parent.name[: -len("_slides")]
        froc_path = work / f"{stem}_froc" / "froc_report.json"
        f = _load(froc_path) if froc_path.exists() else None
        rows.append(
            f"| {s['results']} ({s['score_field']}) | {s['n']} ({s['n_tumor']} tumor) | {_fmt(s['auc'])}"
            f"{_ci(s.get('auc_ci'))} | {_fmt(f['froc_score']) + _ci(f.get('froc_ci')) if f else ''} "
            f"| {f['n_lesions'] if f else ''} |"
        )
    return rows


def tune_rows(work: Path) -> list[str]:
    """One markdown row per ``evaluate tune`` report and lesion map: the heatmap defaults (smoothing 0.75,
    threshold 0.5, NMS 4 cells) and the lesion scorer; other settings of a tuning grid are left out."""
    rows = []
    for path in sorted(work.glob("*/tune_report.json")):
        t = _load(path)
        for i, row in enumerate(t["rows"]):
            default = row["smooth"] == SMOOTH_SIGMA and row["lesion_threshold"] == 0.5 and row["nms_radius"] == 4
            if row.get("map") != "scorer" and not default:
                continue
            setting = "lesion scorer" if row.get("map") == "scorer" else f"smooth {row['smooth']}"
            rows.append(
                f"| {path.parent.name} | {t['n_slides']} ({t['n_tumor_slides']} tumor) | {setting}, "
                f"threshold {row['lesion_threshold']}, NMS {row['nms_radius']:g} "
                f"| {_fmt(row['slide_auc'])} | {_fmt(row['froc'])}{_ci(t.get('best_froc_ci')) if i == 0 else ''} |"
            )
    return rows


def main(argv: list[str]) -> int:
    work = Path(argv[1] if len(argv) > 1 else "idc-run")
    if not work.is_dir():
        print(f"idc_table.py: {work}: no such folder (give the WORK_DIR of reproduce_idc.sh)", file=sys.stderr)
        return 2
    tables = [
        ("Patch level", "| report | model | TTA | patches | AUC | balanced accuracy (0.5) | sensitivity | specificity |",
         patch_rows(work)),
        ("Slide and lesion level (95 % bootstrap intervals)",
         "| heatmaps (slide score) | slides | slide AUC | lesion FROC | lesions |",
         slide_rows(work)),
        ("Pooled sets (evaluate tune; interval: best row)", "| report | slides | setting | slide AUC | lesion FROC |", tune_rows(work)),
    ]
    found = False
    for title, header, rows in tables:
        if not rows:
            continue
        found = True
        print(f"\n{title}\n\n{header}\n|{'---|' * (header.count('|') - 1)}")
        print("\n".join(rows))
    if not found:
        print(f"idc_table.py: {work}: no evaluation reports found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
