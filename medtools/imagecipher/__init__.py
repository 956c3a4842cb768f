"""Image-domain ciphers and filters shared by the families that need them.

``encrypt --method block|logistic-sine`` (secure family) and the classifiers trained on
encrypted images (cls family) both use these modules; no family imports another, so the
algorithms live here: ``derive`` (key expansion), ``block`` (block-wise learnable
encryption), ``chaos`` (logistic-sine cipher), ``filters`` (obfuscation baselines),
``methods`` (image files ↔ grey levels ↔ one method), ``keyfile`` (256-bit key files and
their public fingerprint).
"""

# Method names (plain data, so that the CLI needs no numpy to check a flag).
AES_GCM = "aes-gcm"
CIPHERS = ("logistic-sine", "block")
REVERSIBLE_FILTERS = ("negative", "shuffle")
IRREVERSIBLE_FILTERS = ("median", "mean", "max", "min")
IMAGE_METHODS = CIPHERS + REVERSIBLE_FILTERS + IRREVERSIBLE_FILTERS
ALL_METHODS = (AES_GCM,) + IMAGE_METHODS
