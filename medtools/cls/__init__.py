"""Tumour / finding classification on plain or encrypted images (DenseNet-121, Xception).

``slices`` cuts brain volumes into labelled 2-D slices, ``cls-train`` trains a timm
classifier on plain, block-encrypted or logistic-sine-encrypted images (encrypted on the
fly with the user's key), ``classify``/``cls-eval`` run it, ``cipher-attack`` measures
what the block cipher gives away. The ciphers themselves live in ``medtools.imagecipher``.
"""

ARCHS = {"densenet121": "densenet121", "xception": "legacy_xception"}  # CLI name → timm model
ENCRYPTIONS = ("none", "block", "logistic-sine")
