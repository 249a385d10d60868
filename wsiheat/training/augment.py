"""Training augmentation: geometry, Liu et al.'s RGB colour jitter and HED stain jitter.

:func:`augment_batch` runs batched inside the ``tf.data`` pipeline on uint8
``(B, T, W, W, 3)`` batches. Every tower of a sample (they share a centre) gets
the SAME random rotation (0/90/180/270 degrees), flips and colour draws:

* RGB colour jitter (Liu et al. 2017): brightness, saturation, hue, contrast.
* HED stain jitter (Tellez et al. 2018/2019): the image is taken to optical
  density, unmixed into haematoxylin, eosin and DAB concentrations with the
  Ruifrok-Johnston matrix (scikit-image's ``hed_from_rgb``), each concentration
  is scaled by ``U(1 - sigma, 1 + sigma)`` and shifted by
  ``U(-sigma, sigma) * HED_BIAS_SCALE`` optical-density units, and the result is
  mixed back (``rgb_from_hed``). It runs before the RGB jitter: staining
  happens before lighting. On by default (sigma 0.35) since round 2 of
  docs/experiments/stain-robustness.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsiheat import defaults
from wsiheat.errors import WsiheatError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

HED_BIAS_SCALE = 0.1
"""Shift of a HED concentration per unit of ``hed`` sigma, in optical density (natural log)
units: sigma 0.35 shifts by at most 0.035, against about 1.0 for a nucleus and 0.05 for
background."""


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; a zero disables a colour term.

    Defaults follow Liu et al. 2017: brightness max delta 64/255, saturation max
    delta 0.25 (factor 0.75-1.25), hue max delta 0.04, contrast max delta 0.75
    (factor 0.25-1.75); random orthogonal rotation and flips. ``hed`` is the
    sigma of the HED stain jitter (default :data:`wsiheat.defaults.HED_JITTER`,
    0: off; see the module docstring).
    """

    rotate: bool = True
    flip: bool = True
    brightness: float = 64.0 / 255.0
    saturation: float = 0.25
    hue: float = 0.04
    contrast: float = 0.75
    hed: float = defaults.HED_JITTER

    def __post_init__(self):
        for name in ("brightness", "saturation", "hue", "contrast", "hed"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise WsiheatError(f"augmentation {name}={v}: need a value in [0, 1]")

    @property
    def colour(self) -> bool:
        """Whether any RGB colour term is on (HED jitter is separate: :attr:`hed`)."""
        return any((self.brightness, self.saturation, self.hue, self.contrast))


def augment_batch(images: tf.Tensor, config: AugmentConfig = AugmentConfig(),
                  seed: int | None = None) -> tf.Tensor:
    """Augment a uint8 batch ``(B, T, W, W, 3)``; returns uint8 of the same shape.

    Every tower of a sample gets the same rotation, flips and colour draw.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    b = tf.shape(x)[0]
    gen = tf.random.Generator.from_seed(seed) if seed is not None else None

    def uniform(shape, lo, hi, dtype=tf.float32):
        if gen is not None:
            return gen.uniform(shape, lo, hi, dtype=dtype)
        return tf.random.uniform(shape, lo, hi, dtype=dtype)

    bshape = tf.stack([b, 1, 1, 1, 1])
    if config.rotate:
        k = uniform([b], 0, 4, dtype=tf.int32)
        r = x
        rots = [x]
        for _ in range(3):  # rot90 counter-clockwise on axes (2, 3) = (rows, cols)
            r = tf.reverse(tf.transpose(r, [0, 1, 3, 2, 4]), axis=[2])
            rots.append(r)
        out = rots[0]
        for i in range(1, 4):
            out = tf.where(tf.reshape(tf.equal(k, i), bshape), rots[i], out)
        x = out
    if config.flip:
        h = uniform([b], 0, 2, dtype=tf.int32)
        v = uniform([b], 0, 2, dtype=tf.int32)
        x = tf.where(tf.reshape(tf.equal(h, 1), bshape), tf.reverse(x, axis=[3]), x)
        x = tf.where(tf.reshape(tf.equal(v, 1), bshape), tf.reverse(x, axis=[2]), x)
    if not (config.colour or config.hed):
        return x
    f = tf.cast(x, tf.float32) / 255.0
    if config.hed:
        f = hed_jitter(f, uniform(tf.stack([b, 1, 1, 1, 3]), 1.0 - config.hed, 1.0 + config.hed),
                       uniform(tf.stack([b, 1, 1, 1, 3]), -config.hed, config.hed) * HED_BIAS_SCALE)
    if config.brightness:
        f = tf.clip_by_value(f + uniform(bshape, -config.brightness, config.brightness), 0.0, 1.0)
    if config.saturation or config.hue:
        hsv = tf.image.rgb_to_hsv(f)
        hh, ss, vv = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        b4 = tf.stack([b, 1, 1, 1])
        if config.saturation:
            ss = tf.clip_by_value(ss * uniform(b4, 1.0 - config.saturation,
                                               1.0 + config.saturation), 0.0, 1.0)
        if config.hue:
            hh = tf.math.floormod(hh + uniform(b4, -config.hue, config.hue), 1.0)
        f = tf.image.hsv_to_rgb(tf.stack([hh, ss, vv], axis=-1))
    if config.contrast:
        mean = tf.reduce_mean(f, axis=[2, 3], keepdims=True)  # per sample, tower, channel
        f = (f - mean) * uniform(bshape, 1.0 - config.contrast, 1.0 + config.contrast) + mean
    f = tf.clip_by_value(f, 0.0, 1.0)
    return tf.cast(tf.round(f * 255.0), tf.uint8)




def hed_jitter(f: tf.Tensor, scale: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """Scale and shift H, E and DAB concentrations of float RGB images in [0, 1].

    Parameters
    ----------
    f : float32 tensor (..., 3)
        RGB in [0, 1].
    scale, bias : float32 tensors broadcastable to ``f``
        Per-channel factor and shift (optical density units) of the H, E and DAB
        concentrations. ``scale=1, bias=0`` gives ``f`` back (to float error).

    Returns
    -------
    float32 tensor like ``f``, clipped to [0, 1].
    """
    import tensorflow as tf
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -tf.math.log(tf.maximum(f, 1e-6))
    conc = tf.tensordot(od, tf.constant(hed_from_rgb, tf.float32), axes=[[-1], [0]])
    conc = conc * scale + bias
    od2 = tf.tensordot(conc, tf.constant(rgb_from_hed, tf.float32), axes=[[-1], [0]])
    return tf.clip_by_value(tf.exp(-od2), 0.0, 1.0)
