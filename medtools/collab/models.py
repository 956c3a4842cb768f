"""The collab family's kinds: ``ae-image``, ``ae-mask`` (skip-connected autoencoders),
``umn`` (Unified Mapping Network), ``klt-key`` (a client key: no model) and ``klt-latent``
(one image's protected latents: no model). Plain data, torch-free.

For the autoencoders the Predictor entry points are: ``features`` = encoder (image in [0, 1]
→ packed latents (N, D)), ``forward`` = decoder (packed latents → output; always called with
``model_space=True``). For the UMN, ``forward`` maps packed image latents to packed mask
latents (``model_space=True``). ``medtools.collab.autoencoder.unpack`` restores the scales.
"""

from __future__ import annotations

from medtools.core.registry import register_kind

AE_KEYS = ("in_channels", "out_channels", "widths", "latent_channels", "image_size")
UMN_KEYS = ("in_channels", "out_channels", "image_size", "widths", "pool_sizes")

for _name, _what in (("ae-image", "image"), ("ae-mask", "mask")):
    register_kind(
        _name,
        family="collab",
        builder="medtools.collab.autoencoder:build_autoencoder",
        description=f"skip-connected {_what} autoencoder with multi-scale latents (collaborative segmentation client)",
        builder_keys=AE_KEYS,
        info_keys=("target", "latent_noise"),
        forward="medtools.collab.autoencoder:decode_packed",
        features="medtools.collab.autoencoder:encode_packed",
        example="medtools.collab.autoencoder:contract_example",
        task="none",
        tiny=({"in_channels": 1, "out_channels": 1, "widths": [8, 16], "latent_channels": [2, 4], "image_size": 16, "target": _what},),
    )

register_kind(
    "umn",
    family="collab",
    builder="medtools.collab.umn:build_umn",
    description="Unified Mapping Network: image latents → mask latents (pyramid pooling 1,3,5,7; server side)",
    builder_keys=UMN_KEYS,
    info_keys=("space", "dp"),
    forward="medtools.collab.umn:map_packed",
    example="medtools.collab.umn:contract_example",
    task="none",
    channels_key=None,
    tiny=({"in_channels": [2, 4], "out_channels": [2, 4], "image_size": 16, "widths": [8, 16], "pool_sizes": [1, 3, 5, 7]},),
)

register_kind(
    "klt-key",
    family="collab",
    builder=None,
    description="client key of the Keyed Latent Transform: per-scale orthogonal Q and bias b, keyed coupling layers (nonlinear) and block permutation (file mode 0600)",
    info_keys=("latent_channels", "key_id", "seeded", "bias_scale", "transform", "transform_params"),
    task="none",
    channels_key=None,
)

register_kind(
    "klt-latent",
    family="collab",
    builder=None,
    description="one image's multi-scale latents, protected by a client's KLT key (the payload a client sends)",
    info_keys=("source", "case", "key_id", "transform", "shapes", "image_shape", "format", "state", "dtype"),
    task="none",
    channels_key=None,
)
