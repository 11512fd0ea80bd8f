"""Models of the generation stack: the face refiner (N references -> ID tokens), HiFi-Net (landmark- and
identity-conditioned ControlNet-style branch) and the decoupled ID cross-attention processors of the UNet."""

from hifi_portrait.models.face_refiner import FaceRefiner
from hifi_portrait.models.hifi_net import HiFiNetCondition, HiFiNetModel, HiFiNetOutput
from hifi_portrait.models.id_attention import (
    IDAttnProcessor,
    RegionalIDTokens,
    get_id_attn_processors,
    id_attention_layer_names,
    install_id_attention,
    region_masks_at,
    remove_id_attention,
    set_id_scale,
    split_token_sets,
    sync_id_attention,
    with_id_tokens,
)

__all__ = [
    "FaceRefiner",
    "HiFiNetCondition",
    "HiFiNetModel",
    "HiFiNetOutput",
    "IDAttnProcessor",
    "RegionalIDTokens",
    "get_id_attn_processors",
    "id_attention_layer_names",
    "install_id_attention",
    "region_masks_at",
    "remove_id_attention",
    "set_id_scale",
    "split_token_sets",
    "sync_id_attention",
    "with_id_tokens",
]
