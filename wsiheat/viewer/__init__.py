"""``wsiheat view``: the heatmap results in the browser, and exports for QuPath and ASAP.

* :mod:`.catalog` matches a results folder with its slides, labels and ground truth;
* :mod:`.tiles` makes deep-zoom tiles of slides (OpenSlide's DeepZoomGenerator) and heatmaps, with an LRU cache;
* :mod:`.pages` renders the index (triage list) and slide pages (OpenSeadragon);
* :mod:`.server` serves them (Flask, loopback by default, no path from a request reaches the filesystem);
* :mod:`.static_copy` writes a self-contained static copy (``--export``);
* :mod:`.exports` writes ``NAME_qupath.geojson`` and ``NAME_asap.xml`` for existing result folders
  (the writers are :mod:`wsiheat.inference.exports`).

The commands are ``wsiheat view`` and ``wsiheat export`` (:mod:`wsiheat.cli.view`).
"""

from wsiheat.viewer.catalog import Catalog, SlideEntry, build_catalog

__all__ = ["Catalog", "SlideEntry", "build_catalog"]
