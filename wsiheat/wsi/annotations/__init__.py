"""Tumor ground truth: readers (and the ASAP writer) of every format, behind one loader.

:func:`load_ground_truth` picks the format by content from a registry
(:func:`register_format`): ASAP XML (:mod:`.asap`), CAMELYON16 JSON and GeoJSON
(:mod:`.jsonfmt`), mask images (:class:`MaskGroundTruth`), and any format
registered by the user. Polygons are rasterized by :mod:`.raster`.
"""

from wsiheat.wsi.annotations.asap import asap_xml, read_asap_xml
from wsiheat.wsi.annotations.groundtruth import (
                                                 GroundTruth,
                                                 GroundTruthFormat,
                                                 MaskGroundTruth,
                                                 PolygonGroundTruth,
                                                 formats,
                                                 load_ground_truth,
                                                 register_format,
                                                 sniff_format,
                                                 unregister_format,
)
from wsiheat.wsi.annotations.jsonfmt import read_json_annotations
from wsiheat.wsi.annotations.raster import rasterize_polygons

__all__ = ["GroundTruth", "GroundTruthFormat", "MaskGroundTruth", "PolygonGroundTruth", "asap_xml", "formats",
           "load_ground_truth", "read_asap_xml", "read_json_annotations", "rasterize_polygons",
           "register_format", "sniff_format", "unregister_format"]
