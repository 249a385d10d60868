"""HTML pages of the viewer (index and slide pages), shared by the server and the static copy.

Every URL in a page is relative, so the same pages work under the server and
from ``file://``: the index is ``index.html``, a slide page
``slides/KEY.html``, its tiles ``slides/KEY/slide_files/L/C_R.jpeg`` and
``slides/KEY/heatmap_files/L/C_R.png`` (and, under the server, for a slide
whose heatmap applied a stain normalisation, ``slides/KEY/stain_files/L/C_R.jpeg``:
the slide as the model saw it), the assets ``static/...``. The slide
page carries its data (geometry, candidates, outlines) as JSON in the page:
the browser fetches nothing but images.
"""

from __future__ import annotations

import json
import math

from jinja2 import Environment, PackageLoader, select_autoescape

from wsiheat.viewer.catalog import Catalog, SlideEntry
from wsiheat.viewer.tiles import COLORMAPS, OVERLAP, TILE_SIZE, HeatmapLayer, StainMap, dz_level_dimensions

_ENV = Environment(loader=PackageLoader("wsiheat.viewer", "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _fmt(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def summary_line(catalog: Catalog) -> str:
    """The index's one-line summary: slides, problems, slide AUC and FROC when known."""
    s = catalog.summary
    parts = [f"{s['n']} slide{'s' if s['n'] != 1 else ''}"]
    if s.get("n_problems"):
        parts.append(f"{s['n_problems']} cannot be shown")
    if "auc" in s:
        parts.append(f"slide AUC {s['auc']:.3f} over {s['n_labelled']} labelled slides")
    for k, label in (("auc", "slide AUC"), ("froc_score", "FROC")):
        rep = s.get("reports", {}).get(k)
        if rep:
            parts.append(f"{label} {rep['value']:.3f} (from {rep['file']})")
    return " · ".join(parts)


def stain_info(entry: SlideEntry) -> str:
    """One line on the stain normalisation the heatmap applied to the slide ("" when none)."""
    rec = entry.summary.get("stain")
    if not isinstance(rec, dict) or not rec.get("method"):
        return ""
    method = str(rec["method"])
    if not isinstance(rec.get("source"), dict):
        why = rec.get("not_fitted")
        return f"stain: {method}, not fitted on this slide" + (f" ({why})" if why else "")
    n = rec.get("fitted_on_windows")
    return f"stain: {method}" + (f", fitted on {n} tissue windows" if isinstance(n, int) and n > 0 else "")


def render_index(catalog: Catalog, live: bool = True) -> str:
    """The index page: the triage list, highest score first."""
    rows = []
    for rank, e in enumerate(catalog.entries, 1):
        rows.append({
            "rank": rank, "key": e.key, "name": e.name, "score": e.score, "score_text": _fmt(e.score),
            "lesions": e.n_lesions, "label": {1: "tumor", 0: "normal"}.get(e.label, ""),
            "gt": e.ground_truth.name if e.ground_truth is not None else "",
            "gt_problem": e.gt_problem or "", "problem": e.problem or "",
            "has_thumb": e.path_of("_overlay.png").is_file(),
        })
    return _ENV.get_template("index.html").render(
        title=f"wsiheat · {catalog.results_dir.name}", rows=rows, summary=summary_line(catalog), live=live)


def slide_data(catalog: Catalog, entry: SlideEntry, slide_layer, heatmap_layer: HeatmapLayer,
               live: bool = True, slide_max_level: int | None = None, stain: StainMap | None = None) -> dict:
    """The JSON a slide page carries (see ``static/viewer.js``).

    ``stain`` (the server's :meth:`~wsiheat.viewer.server.Layers.stain`) adds the
    stain-normalised slide layer, same geometry as the slide layer, and its toggle.
    """
    W, H = slide_layer.width, slide_layer.height
    prev_key, next_key = catalog.neighbours(entry.key)
    full = len(dz_level_dimensions(W, H)) - 1
    k = 0 if slide_max_level is None else max(0, full - int(slide_max_level))
    # without the k finest levels the slide layer is an image 2**k times smaller, scaled up to cover the slide
    sw, sh = math.ceil(W / 2 ** k), math.ceil(H / 2 ** k)
    return {
        "key": entry.key, "name": entry.name, "width": W, "height": H, "mpp": entry.mpp,
        "score": entry.score if math.isfinite(entry.score) else None,
        "slide": {"width": sw, "height": sh, "tileSize": TILE_SIZE, "overlap": OVERLAP, "maxLevel": full - k,
                  "vpWidth": sw * 2 ** k / W, "url": f"{entry.key}/slide_files/", "format": "jpeg"},
        "stain": None if stain is None else {"method": stain.method, "url": f"{entry.key}/stain_files/",
                                             "format": "jpeg"},
        "heatmap": {"width": heatmap_layer.width, "height": heatmap_layer.height, "tileSize": TILE_SIZE,
                    "overlap": OVERLAP, "maxLevel": heatmap_layer.level_count - 1,
                    "url": f"{entry.key}/heatmap_files/", "format": "png",
                    "rect": heatmap_layer.viewport_rect(W), "cellSize": heatmap_layer.cell_size},
        "lesions": [[round(float(p), 4), round(float(x), 1), round(float(y), 1)] for p, x, y in entry.lesions()],
        "outlines": entry.outlines(),
        "gtProblem": entry.gt_problem,
        "prev": prev_key, "next": next_key,
        "live": bool(live), "colormaps": list(COLORMAPS) if live else [COLORMAPS[0]],
    }


def render_slide(catalog: Catalog, entry: SlideEntry, data: dict | None, live: bool = True) -> str:
    """A slide page; ``data`` from :func:`slide_data`, None when the slide cannot be shown."""
    prev_key, next_key = catalog.neighbours(entry.key)
    # no "<" in the page's JSON: it cannot close the script element
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c") if data is not None else "null"
    return _ENV.get_template("slide.html").render(
        title=f"{entry.name} · wsiheat", entry=entry, score_text=_fmt(entry.score), data_json=text,
        stain_info=stain_info(entry), stain_toggle=bool(data and data.get("stain")),
        problem=entry.problem, prev_key=prev_key, next_key=next_key, live=live,
        label={1: "tumor", 0: "normal"}.get(entry.label, ""))
