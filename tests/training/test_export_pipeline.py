"""The exported adapter loads with `pipe.load_hifi_portrait` and drives the pipeline like the trained model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from training_helpers import tiny_config

from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.training.data import collate_samples
from hifi_portrait.training.step import encode_ref_images, reference_input
from hifi_portrait.training.train import train
from hifi_portrait.utils.testing import get_dummy_components


def _pipe():
    return StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(seed=0)).to("cpu")


def test_exported_adapter_loads_and_changes_output(tiny_sdxl, photo_dataset, faces, tmp_path):
    cfg = tiny_config(tiny_sdxl, tmp_path / "run", train={"max_train_steps": 6}, optim={"learning_rate": 3e-3})
    result = train(cfg, dataset=photo_dataset, return_model=True)
    trained = result.model

    pipe = _pipe()
    assert pipe.load_hifi_portrait(result.adapter_path) == ["face_refiner", "hifi_net", "ip_attn"]
    # the pipeline holds exactly the trained weights
    for name in ("face_refiner", "hifi_net"):
        ours, theirs = getattr(trained, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k].cpu(), theirs[k]) for k in ours)

    refs = faces["obama"][1:]
    landmark = photo_dataset[0]["landmark_map"]  # obama.jpg's map, 32x32
    kwargs = dict(
        prompt="a photo of a person", faces=refs, landmark_image=landmark, num_inference_steps=2, output_type="np"
    )
    out1 = pipe(**kwargs, id_scale=1.0, generator=torch.Generator().manual_seed(0)).images
    out0 = pipe(**kwargs, id_scale=0.0, generator=torch.Generator().manual_seed(0)).images
    again = pipe(**kwargs, id_scale=1.0, generator=torch.Generator().manual_seed(0)).images
    assert out1.shape == (1, 32, 32, 3)
    assert np.abs(out1 - again).max() < 1e-6  # deterministic, so the difference below is the ID's
    assert np.abs(out1 - out0).mean() > 1e-3

    # training and inference turn the same references into (nearly) the same ID tokens
    batch = collate_samples([photo_dataset[0]])  # target obama.jpg, references obama2/obama3
    encoder = pipe.image_encoder
    with torch.no_grad():
        tokens_train = trained.face_refiner(
            batch["ref_identity"],
            encode_ref_images(encoder, reference_input(batch)),
            batch["ref_quality"],
            batch["ref_mask"],
        )
        tokens_pipe = pipe.encode_id_tokens(faces=refs, device=torch.device("cpu"))
    cos = F.cosine_similarity(tokens_train.flatten(), tokens_pipe.flatten(), dim=0).item()
    assert cos > 0.999, cos  # measured 0.999997 (the only difference: resize order of the crops)
