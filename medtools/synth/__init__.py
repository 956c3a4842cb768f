"""Synthesis family: DDPM training and sampling, FID/KID/PRC, membership inference, DP-SGD."""
