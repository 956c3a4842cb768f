"""Networks shared by several families: builders only (smp segmenters, timm classifiers).

Families register kinds that point here (``medtools.nets.classifier:build_classifier``);
no family imports another family for a network.
"""
