"""InceptionV3 feature extractor (backbone) with stable layer names.

The backbone takes float images ALREADY scaled to [-1, 1] (the caller's model
does the uint8 -> [-1, 1] preprocessing) and returns the 2048-d global-average
pooled features of the last mixed block. Any input of 75 x 75 px and up works
(the project uses 80 x 80 windows).

Two variants share the same graph and the same layer names:

``"tf2015"``
    Google's 2015-12-05 Inception-v3 graph exactly (the ImageNet model that
    ``wsiheat weights`` converts): batch norm without gamma (``scale=False``),
    epsilon 1e-3, and -- the one difference from Keras -- a 3x3 *max* pooling
    in the pool branch of the last mixed block (``mixed10``).
``"keras"``
    Weight-compatible with ``keras.applications.InceptionV3(include_top=False)``
    (average pooling in every mixed-block pool branch), so Keras's own cached
    ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`` loads.

Layer names follow the TorchScript module paths of the converted model:
a conv unit at ``net.layers.mixed_5.tower_1.conv_2`` is the Conv2D layer
``mixed5_tower_1_conv_2`` followed by ``mixed5_tower_1_conv_2_bn``
(BatchNormalization) and ``mixed5_tower_1_conv_2_relu``; the stem units are
``stem_conv`` ... ``stem_conv_4``; block outputs are ``mixed0`` ... ``mixed10``
(the Keras names, usable for ``--trainable-from mixed5``). The graph
(including the nested concatenations of ``mixed9``/``mixed10``) mirrors
``keras.applications.InceptionV3`` node for node, so ``model.layers`` lists
the weighted layers in the same order as Keras does: that order is how Keras's
own h5 file is loaded (see :mod:`wsiheat.models.weights`).
"""

from __future__ import annotations

import keras
from keras import KerasTensor, layers

VARIANTS = ("tf2015", "keras")
MIN_SIZE = 75
FEATURES = 2048
BN_EPSILON = 1e-3


def conv_bn(x: KerasTensor, filters: int, kernel: tuple[int, int], name: str, strides: int = 1,
            padding: str = "same") -> KerasTensor:
    """Conv2D (no bias) -> BatchNormalization (no gamma, eps 1e-3) -> ReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(axis=-1, scale=False, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def stem(x: KerasTensor) -> KerasTensor:
    """299 -> 35 px (80 -> 7 px) stem: five conv units and two max pools."""
    x = conv_bn(x, 32, (3, 3), "stem_conv", strides=2, padding="valid")
    x = conv_bn(x, 32, (3, 3), "stem_conv_1", padding="valid")
    x = conv_bn(x, 64, (3, 3), "stem_conv_2")
    x = layers.MaxPooling2D((3, 3), strides=2, name="stem_pool0")(x)
    x = conv_bn(x, 80, (1, 1), "stem_conv_3", padding="valid")
    x = conv_bn(x, 192, (3, 3), "stem_conv_4", padding="valid")
    return layers.MaxPooling2D((3, 3), strides=2, name="stem_pool1")(x)


def block_a(x: KerasTensor, index: int, pool_filters: int) -> KerasTensor:
    """35x35 block (``mixed0``-``mixed2``): 1x1, 5x5, double 3x3 and avg-pool branches."""
    p = f"mixed{index}"
    b1 = conv_bn(x, 64, (1, 1), f"{p}_conv")
    b5 = conv_bn(x, 48, (1, 1), f"{p}_tower_conv")
    b5 = conv_bn(b5, 64, (5, 5), f"{p}_tower_conv_1")
    b3 = conv_bn(x, 64, (1, 1), f"{p}_tower_1_conv")
    b3 = conv_bn(b3, 96, (3, 3), f"{p}_tower_1_conv_1")
    b3 = conv_bn(b3, 96, (3, 3), f"{p}_tower_1_conv_2")
    bp = layers.AveragePooling2D((3, 3), strides=1, padding="same", name=f"{p}_tower_2_pool")(x)
    bp = conv_bn(bp, pool_filters, (1, 1), f"{p}_tower_2_conv")
    return layers.Concatenate(axis=-1, name=p)([b1, b5, b3, bp])


def block_b(x: KerasTensor, index: int = 3) -> KerasTensor:
    """35 -> 17 reduction block (``mixed3``)."""
    p = f"mixed{index}"
    b3 = conv_bn(x, 384, (3, 3), f"{p}_conv", strides=2, padding="valid")
    bd = conv_bn(x, 64, (1, 1), f"{p}_tower_conv")
    bd = conv_bn(bd, 96, (3, 3), f"{p}_tower_conv_1")
    bd = conv_bn(bd, 96, (3, 3), f"{p}_tower_conv_2", strides=2, padding="valid")
    bp = layers.MaxPooling2D((3, 3), strides=2, name=f"{p}_pool")(x)
    return layers.Concatenate(axis=-1, name=p)([b3, bd, bp])


def block_c(x: KerasTensor, index: int, filters: int) -> KerasTensor:
    """17x17 block (``mixed4``-``mixed7``) with factorized 7x7 convolutions."""
    p = f"mixed{index}"
    b1 = conv_bn(x, 192, (1, 1), f"{p}_conv")
    b7 = conv_bn(x, filters, (1, 1), f"{p}_tower_conv")
    b7 = conv_bn(b7, filters, (1, 7), f"{p}_tower_conv_1")
    b7 = conv_bn(b7, 192, (7, 1), f"{p}_tower_conv_2")
    bd = conv_bn(x, filters, (1, 1), f"{p}_tower_1_conv")
    bd = conv_bn(bd, filters, (7, 1), f"{p}_tower_1_conv_1")
    bd = conv_bn(bd, filters, (1, 7), f"{p}_tower_1_conv_2")
    bd = conv_bn(bd, filters, (7, 1), f"{p}_tower_1_conv_3")
    bd = conv_bn(bd, 192, (1, 7), f"{p}_tower_1_conv_4")
    bp = layers.AveragePooling2D((3, 3), strides=1, padding="same", name=f"{p}_tower_2_pool")(x)
    bp = conv_bn(bp, 192, (1, 1), f"{p}_tower_2_conv")
    return layers.Concatenate(axis=-1, name=p)([b1, b7, bd, bp])


def block_d(x: KerasTensor, index: int = 8) -> KerasTensor:
    """17 -> 8 reduction block (``mixed8``)."""
    p = f"mixed{index}"
    b3 = conv_bn(x, 192, (1, 1), f"{p}_tower_conv")
    b3 = conv_bn(b3, 320, (3, 3), f"{p}_tower_conv_1", strides=2, padding="valid")
    b7 = conv_bn(x, 192, (1, 1), f"{p}_tower_1_conv")
    b7 = conv_bn(b7, 192, (1, 7), f"{p}_tower_1_conv_1")
    b7 = conv_bn(b7, 192, (7, 1), f"{p}_tower_1_conv_2")
    b7 = conv_bn(b7, 192, (3, 3), f"{p}_tower_1_conv_3", strides=2, padding="valid")
    bp = layers.MaxPooling2D((3, 3), strides=2, name=f"{p}_pool")(x)
    return layers.Concatenate(axis=-1, name=p)([b3, b7, bp])


def block_e(x: KerasTensor, index: int, max_pool: bool) -> KerasTensor:
    """8x8 block (``mixed9``, ``mixed10``) with expanded 1x3 / 3x1 branches.

    ``max_pool`` selects a 3x3 max pool in the pool branch (Google's 2015
    graph, last block) instead of the 3x3 average pool (Keras).
    """
    p = f"mixed{index}"
    b1 = conv_bn(x, 320, (1, 1), f"{p}_conv")
    b3 = conv_bn(x, 384, (1, 1), f"{p}_tower_conv")
    b3a = conv_bn(b3, 384, (1, 3), f"{p}_tower_mixed_conv")
    b3b = conv_bn(b3, 384, (3, 1), f"{p}_tower_mixed_conv_1")
    b3 = layers.Concatenate(axis=-1, name=f"{p}_tower_mixed")([b3a, b3b])
    bd = conv_bn(x, 448, (1, 1), f"{p}_tower_1_conv")
    bd = conv_bn(bd, 384, (3, 3), f"{p}_tower_1_conv_1")
    bda = conv_bn(bd, 384, (1, 3), f"{p}_tower_1_mixed_conv")
    bdb = conv_bn(bd, 384, (3, 1), f"{p}_tower_1_mixed_conv_1")
    bd = layers.Concatenate(axis=-1, name=f"{p}_tower_1_mixed")([bda, bdb])
    pool = layers.MaxPooling2D if max_pool else layers.AveragePooling2D
    bp = pool((3, 3), strides=1, padding="same", name=f"{p}_tower_2_pool")(x)
    bp = conv_bn(bp, 192, (1, 1), f"{p}_tower_2_conv")
    return layers.Concatenate(axis=-1, name=p)([b1, b3, bd, bp])


def check_input_shape(input_shape: tuple) -> tuple:
    """Validate an (H, W, 3) input shape (None allowed for H and W)."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"input_shape={input_shape!r}: expected (height, width, 3)")
    for size in shape[:2]:
        if size is not None and (not isinstance(size, int) or size < MIN_SIZE):
            raise ValueError(f"input_shape={input_shape!r}: InceptionV3 needs windows of at least {MIN_SIZE} px")
    return shape


def inception_v3_backbone(
    input_shape: tuple = (None, None, 3), variant: str = "tf2015", name: str = "inception_v3"
) -> keras.Model:
    """Build an InceptionV3 feature extractor returning 2048-d pooled features.

    Parameters
    ----------
    input_shape : tuple
        ``(height, width, 3)``; sizes may be None (any size >= 75 px at run time).
    variant : {"tf2015", "keras"}
        ``"tf2015"`` matches Google's 2015-12-05 graph (weights from
        ``wsiheat weights``); ``"keras"`` matches ``keras.applications.InceptionV3``.
    name : str
        Name of the returned model (use distinct names for several towers).

    Returns
    -------
    keras.Model
        Input: float32 images in [-1, 1], shape ``(batch, H, W, 3)``.
        Output: ``(batch, 2048)`` global-average-pooled features.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    shape = check_input_shape(input_shape)
    inputs = keras.Input(shape=shape, name="image")
    x = stem(inputs)
    x = block_a(x, 0, pool_filters=32)
    x = block_a(x, 1, pool_filters=64)
    x = block_a(x, 2, pool_filters=64)
    x = block_b(x, 3)
    x = block_c(x, 4, filters=128)
    x = block_c(x, 5, filters=160)
    x = block_c(x, 6, filters=160)
    x = block_c(x, 7, filters=192)
    x = block_d(x, 8)
    x = block_e(x, 9, max_pool=False)
    x = block_e(x, 10, max_pool=(variant == "tf2015"))
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)
