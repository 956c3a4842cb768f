"""explain: saliency maps of the segmenters, classifiers and re-identification attackers, with
the sanity checks that tell a map that depends on the model from an edge detector
(model randomisation, localisation, faithfulness). The maps come from MONAI's
``monai.visualize`` (Grad-CAM, Grad-CAM++, occlusion) and captum (integrated gradients).

The family reaches the models only through :mod:`medtools.api` and core; see docs/explain.md.
"""

METHODS = ("gradcam", "gradcam++", "occlusion", "ig")
