"""Backbones: a registry from a name to a function that builds one tower's feature extractor.

A backbone builder takes ``(window, variant, name)`` and returns a Keras model
mapping ``(window, window, 3)`` float images in ``[-1, 1]`` to a feature
vector. :func:`wsiheat.models.model.build_model` puts one per tower (or one
shared) under a common head. Adding a backbone is one function plus one call::

    from wsiheat.models.backbones import register

    def small_cnn(window, variant, name):
        import keras
        inp = keras.Input((window, window, 3))
        x = keras.layers.Conv2D(4, 3, name="mixed0")(inp)
        return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name=name)

    register("small_cnn", small_cnn)

after which ``build_model(..., backbone="small_cnn")`` and
``wsiheat train --backbone small_cnn`` (when registered before the CLI starts)
use it. A saved model records its backbone name in its metadata only for
information: loading it never needs the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from wsiheat.errors import WsiheatError

if TYPE_CHECKING:  # pragma: no cover
    import keras

#: smallest window InceptionV3's stem and reductions accept
MIN_INCEPTION_WINDOW = 75


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: its builder and what it accepts."""

    name: str
    build: Callable  # (window: int, variant: str, name: str) -> keras.Model
    min_window: int = 8
    imagenet: bool = False  # whether ``weights="imagenet"`` applies to it


_REGISTRY: dict[str, Backbone] = {}


def register(name: str, build: Callable, *, min_window: int = 8, imagenet: bool = False) -> None:
    """Register ``build(window, variant, name) -> keras.Model`` under ``name``.

    Parameters
    ----------
    name : str
        The name users pass as ``backbone=`` (and ``--backbone``).
    build : callable
        Builds one tower's backbone for square windows of side ``window``.
    min_window : int
        Smallest window the backbone accepts.
    imagenet : bool
        Whether ImageNet weights (``weights="imagenet"``) can be loaded into it.
    """
    if not name or not isinstance(name, str):
        raise WsiheatError(f"backbone name {name!r}: need a non-empty string")
    _REGISTRY[name] = Backbone(name, build, int(min_window), bool(imagenet))


def unregister(name: str) -> None:
    """Remove a registered backbone (no error when it is not registered)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered backbone names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Backbone:
    """The registered backbone ``name``; a :class:`WsiheatError` names the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WsiheatError(f"backbone={name!r}: choose one of {', '.join(_REGISTRY)}") from None


def tiny_backbone(input_shape: tuple = (None, None, 3), name: str = "tiny") -> keras.Model:
    """A two-convolution stand-in for InceptionV3 (fast tests only).

    Its two blocks are named ``mixed0`` and ``mixed1`` so that
    :func:`wsiheat.models.model.set_trainable_from` works on it exactly as on InceptionV3.
    """
    import keras

    inp = keras.Input(input_shape, name=f"{name}_input")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv0")(inp)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.Activation("relu", name="mixed0")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv1")(x)
    x = keras.layers.Activation("relu", name="mixed1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inp, x, name=name)


def _inception_v3(window: int, variant: str, name: str):
    from wsiheat.models.inception import inception_v3_backbone

    return inception_v3_backbone((window, window, 3), variant=variant, name=name)


def _tiny(window: int, variant: str, name: str):
    return tiny_backbone((window, window, 3), name=name)


def backbones(model: keras.Model) -> list[keras.Model]:
    """The distinct backbone sub-models of a model built by :func:`wsiheat.models.model.build_model`."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


register("inception_v3", _inception_v3, min_window=MIN_INCEPTION_WINDOW, imagenet=True)
register("tiny", _tiny)
