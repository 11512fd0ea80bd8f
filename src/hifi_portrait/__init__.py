"""hifi-portrait: identity-preserving portrait generation from several reference photos (HiFi-Portrait, CVPR 2025).

Sub-packages, in the order data flows: ``face`` (analysis of reference photos), ``landmarks`` (3D-aware target
landmarks and conditioning maps), ``models`` (face refiner, HiFi-Net, ID attention), ``loaders`` (one-file adapter
loading), ``pipelines`` (the SDXL pipeline), ``data`` (identity-grouped dataset builder), ``training``,
``evaluation``, ``cli`` and ``demo``.
"""

__version__ = "0.1.0"

# diffusers' DiffusionPipeline.from_pretrained finds non-diffusers components as ``<library>.<ClassName>``
# (model_index.json stores ["hifi_portrait", "FaceRefiner"]); exported lazily so that importing hifi_portrait
# stays light.
_LAZY_MODELS = {
    "FaceRefiner": "hifi_portrait.models",
    "HiFiNetModel": "hifi_portrait.models",
    "InstantIDImageProjection": "hifi_portrait.models.instantid_projection",
}


def __getattr__(name: str):
    if name in _LAZY_MODELS:
        import importlib

        return getattr(importlib.import_module(_LAZY_MODELS[name]), name)
    raise AttributeError(f"module 'hifi_portrait' has no attribute {name!r}")
