"""One-file adapter loading and saving (``face_refiner.*``, ``hifi_net.*``, ``ip_attn.*`` in one .safetensors)."""

from hifi_portrait.loaders.adapter_file import (
    ADAPTER_FORMAT,
    PARTS,
    AdapterFile,
    check_state_dict,
    read_adapter_file,
    write_adapter_file,
)
from hifi_portrait.loaders.hifi_portrait_loader import HiFiPortraitLoaderMixin

__all__ = [
    "ADAPTER_FORMAT",
    "PARTS",
    "AdapterFile",
    "HiFiPortraitLoaderMixin",
    "check_state_dict",
    "read_adapter_file",
    "write_adapter_file",
]
