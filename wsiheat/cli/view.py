"""CLI commands ``view`` (the results in the browser) and ``export`` (QuPath and ASAP files of result folders).

User errors are raised as :class:`wsiheat.errors.WsiheatError` (one line, exit status 2).
"""

from __future__ import annotations

import click

from wsiheat.cli.main import cli


@cli.command("view")
@click.argument("results_dir", type=click.Path(path_type=str))
@click.option("--slides", default=None, type=click.Path(path_type=str),
              help="Folder of the slides (NAME.svs, NAME.tif ...); default: the path recorded in NAME.json.")
@click.option("--manifest", default=None, type=click.Path(path_type=str),
              help="Manifest CSV slide,ground_truth,split giving the slides and their ground truth.")
@click.option("--reference", default=None, type=click.Path(path_type=str),
              help="CSV slide,label (tumor/normal): labels and the slide AUC on the index.")
@click.option("--ground-truth", "ground_truth", multiple=True, type=click.Path(path_type=str),
              help="Ground-truth file or folder (XML, JSON, GeoJSON, mask); repeat for more.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the slides to the network.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option("--cache-mb", default=256, show_default=True, type=click.IntRange(min=1),
              help="Size of the tile cache.")
@click.option("--export", "export_dir", default=None, type=click.Path(path_type=str),
              help="Write a static copy (index, pages, tiles) to this new folder instead of serving.")
@click.option("--export-downsample", default=4.0, show_default=True, type=float,
              help="With --export: finest slide tiles, in level-0 pixels per pixel (1 = full resolution).")
def view(results_dir: str, slides: str | None, manifest: str | None, reference: str | None,
         ground_truth: tuple[str, ...], port: int, host: str, no_browser: bool, cache_mb: int,
         export_dir: str | None, export_downsample: float) -> None:
    """Look at every slide's heatmap in the browser.

    \b
    RESULTS_DIR is a folder written by `wsiheat heatmap`. The index page lists
    the slides by score (the triage list); a slide page shows the slide with
    the heatmap over it, the lesion candidates and the ground truth.
    Keys on a slide page: n/p candidates, ]/[ slides, h heatmap, g outline.
    """
    from wsiheat.viewer.catalog import build_catalog

    catalog = build_catalog(results_dir, slides=slides, manifest=manifest, reference=reference,
                            ground_truth=ground_truth)
    for e in catalog.entries:
        if e.problem:
            click.echo(f"wsiheat view: warning: {e.name}: {e.problem}", err=True)
    if export_dir is not None:
        from wsiheat.viewer.static_copy import export_static

        stats = export_static(catalog, export_dir, export_downsample)
        click.echo(f"wsiheat view: wrote a static copy of {len(stats['slides'])} slide(s) "
                   f"({stats['slide_tiles']} slide tiles, {stats['heatmap_tiles']} heatmap tiles) to "
                   f"{stats['index']}")
        return
    from wsiheat.viewer.server import ViewerServer, create_app, is_loopback

    if not is_loopback(host):
        click.echo(f"wsiheat view: warning: listening on {host}: anyone who can reach this machine can see "
                   f"these slides (no login); use the default --host 127.0.0.1 unless that is intended", err=True)
    server = ViewerServer(create_app(catalog, cache_bytes=cache_mb << 20), host, port)
    click.echo(f"wsiheat view: {len(catalog.entries)} slide(s) at {server.url}  (Ctrl-C to stop)", err=False)
    if not no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


@cli.command("export")
@click.argument("results_dir", type=click.Path(path_type=str))
@click.option("-o", "--out-dir", default=None, type=click.Path(path_type=str),
              help="Where to write (default: RESULTS_DIR, beside the other outputs).")
@click.option("--min-prob", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Leave heatmap cells below this probability out of NAME_qupath.geojson (smaller files).")
@click.option("--asap-threshold", default=None, type=click.FloatRange(0, 1),
              help="Also write the heatmap thresholded at this probability as polygons in NAME_asap.xml.")
def export(results_dir: str, out_dir: str | None, min_prob: float, asap_threshold: float | None) -> None:
    """Write NAME_qupath.geojson and NAME_asap.xml for every result of RESULTS_DIR.

    \b
    NAME_qupath.geojson: heatmap cells as QuPath detections with a "tumor
    probability" measurement (Measure > Show measurement maps) and the lesion
    candidates as Tumor point annotations; drag it onto the slide in QuPath.
    NAME_asap.xml: the lesion candidates as ASAP Dot annotations.
    """
    from pathlib import Path

    from wsiheat.viewer.exports import export_results

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    done = export_results(results_dir, out_dir, min_prob, asap_threshold)
    for name, paths in done.items():
        click.echo(f"{name}: {paths['qupath']}  {paths['asap']}")
