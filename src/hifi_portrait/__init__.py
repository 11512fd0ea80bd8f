"""hifi-portrait: identity-preserving portrait generation from several reference photos (HiFi-Portrait, CVPR 2025).

Sub-packages, in the order data flows: ``face`` (analysis of reference photos), ``landmarks`` (3D-aware target
landmarks and conditioning maps), ``models`` (face refiner, HiFi-Net, ID attention), ``loaders`` (one-file adapter
loading), ``pipelines`` (the SDXL pipeline), ``data`` (identity-grouped dataset builder), ``training``,
``evaluation``, ``cli`` and ``demo``.
"""

__version__ = "0.1.0"
