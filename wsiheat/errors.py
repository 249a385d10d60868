"""User-facing errors.

Every problem caused by the user's input (a missing file, a file that is not a
slide, bad parameters, ...) is raised as :class:`WsiheatError` (or one of its
subclasses, which callers can catch separately) with a one-line message that
names the file or value and the problem. The CLI prints that line and exits
with status 2, without a traceback. Any other exception is a bug.
"""

from __future__ import annotations


class WsiheatError(Exception):
    """A user error with a one-line message naming the file and the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SlideError(WsiheatError):
    """A slide that cannot be opened or read (missing, not a slide, damaged, bad region)."""


class GroundTruthError(WsiheatError):
    """Ground truth (annotation XML/JSON/GeoJSON or mask TIFF) that cannot be read or is invalid."""


class PatchFileError(WsiheatError):
    """An HDF5 patches file that is missing, foreign, damaged or incompatible."""


class ModelError(WsiheatError):
    """A saved model that cannot be loaded or does not fit the data it is given."""


class StainError(WsiheatError):
    """Stain normalisation that cannot be fitted or applied (no tissue, no colour, another normaliser's target)."""


class NoStainedTissueError(StainError):
    """Too few stained pixels to fit a stain normaliser on (the image or slide is left unnormalised)."""


__all__ = ["WsiheatError", "SlideError", "GroundTruthError", "PatchFileError", "ModelError", "StainError",
           "NoStainedTissueError"]
