"""Collaborative segmentation through keyed latents (Improved Privacy-SF).

Clients encode images with a skip-connected autoencoder into multi-scale latents, protect
them with a Keyed Latent Transform (``klt.py``) and send only latents; the server maps image
latents to mask latents with a Unified Mapping Network (``umn.py``); the client removes the
transform and decodes the mask. ``attacks.py`` measures what the transform does not hide.
"""
