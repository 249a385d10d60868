"""InceptionV3 backbone (placeholder: replaced by the weights work, same signature)."""

from __future__ import annotations

import keras


def inception_v3_backbone(input_shape=(None, None, 3), variant: str = "tf2015",
                          name: str = "inception_v3") -> keras.Model:
    """InceptionV3 feature extractor: input scaled to [-1, 1], output 2048-d pooled features."""
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=input_shape,
                                          pooling="avg")
    return keras.Model(base.input, base.output, name=name)
