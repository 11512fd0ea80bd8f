"""Identity-grouped dataset builder (photo collections -> training shards) and its training-time reader.

Public API::

    from hifi_portrait.data import BuilderConfig, build_dataset, load_config, PortraitDataset, collate_portraits

    result = build_dataset(["photos/"], "dataset/", load_config("builder.yaml"), engine="local")
    ds = PortraitDataset("dataset/", resolution=512, max_refs=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_portraits)

See docs/dataset.md for the stages, the output layout and every config key.
"""

from hifi_portrait.data.builder import BuildResult, build_dataset
from hifi_portrait.data.cluster import ClusterParams, cluster_identities, pairwise_precision_recall
from hifi_portrait.data.config import BuilderConfig, load_config

_LAZY = {"PortraitDataset", "collate_portraits", "draw_landmark_points"}  # torch: imported only when used


def __getattr__(name: str):
    if name in _LAZY:
        from hifi_portrait.data import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BuildResult",
    "BuilderConfig",
    "ClusterParams",
    "PortraitDataset",
    "build_dataset",
    "cluster_identities",
    "collate_portraits",
    "draw_landmark_points",
    "load_config",
    "pairwise_precision_recall",
]
