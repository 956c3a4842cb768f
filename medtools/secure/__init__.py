"""Secure sharing: AES-GCM containers for doctors' key stores, image-domain ciphers,
cipher audits, Merkle seals and DICOM/NIfTI de-identification.

Every module holds one algorithm; ``commands.py`` only parses flags. Cryptographic
primitives (AES-GCM, scrypt, HKDF, HMAC, SHA-256/SHAKE256, X25519, Ed25519) come from
pycryptodome and hashlib; nothing here implements a primitive of its own.
"""

# Method names live with the image ciphers (medtools.imagecipher, shared with the cls family).
from medtools.imagecipher import AES_GCM, ALL_METHODS, CIPHERS, IMAGE_METHODS, IRREVERSIBLE_FILTERS, REVERSIBLE_FILTERS  # noqa: F401
