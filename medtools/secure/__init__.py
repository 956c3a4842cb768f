"""Secure sharing: AES-GCM containers for doctors' key stores, image-domain ciphers,
cipher audits, Merkle seals and DICOM/NIfTI de-identification.

Every module holds one algorithm; ``commands.py`` only parses flags. Cryptographic
primitives (AES-GCM, scrypt, HKDF, HMAC, SHA-256/SHAKE256, X25519, Ed25519) come from
pycryptodome and hashlib; nothing here implements a primitive of its own.
"""

# Method names (plain data, so that the CLI and crypt.py need no numpy to check a flag).
AES_GCM = "aes-gcm"
CIPHERS = ("logistic-sine", "block")
REVERSIBLE_FILTERS = ("negative", "shuffle")
IRREVERSIBLE_FILTERS = ("median", "mean", "max", "min")
IMAGE_METHODS = CIPHERS + REVERSIBLE_FILTERS + IRREVERSIBLE_FILTERS
ALL_METHODS = (AES_GCM,) + IMAGE_METHODS
