"""Group portraits with the SDXL pipeline: several people, each from its own references, target and place.

::

    from hifi_portrait.pipelines.group import Person, generate_group

    people = [Person(references=["a1.jpg", "a2.jpg"], target=make_target(yaw=20)),
              Person(references=["b1.jpg"], target=make_target(expression="smile"), relative_size=0.9)]
    result = generate_group(pipe, people, prompt="two friends, photo", size=(1216, 832))
    result.images[0].save("group.png")

Per person: its references are analysed, its 3D face shape fitted and its ID tokens encoded (once); the layout
(:mod:`hifi_portrait.landmarks.group`: automatic for 2-4 people, or one explicit box per person) puts every face on
one landmark map and gives each person a region; the pipeline routes each person's ID tokens to its region only
(UNet ID attention and HiFi-Net's ID alignment, :class:`hifi_portrait.models.RegionalIDTokens`).

InstantID mode (a pipeline from :func:`hifi_portrait.loaders.instantid.load_instantid`): IdentityNet runs once per
person, on that person's keypoints and tokens, and its residuals are multiplied by the person's region
(``id_region_images``); the UNet's ID attention is masked as above. Give each person's ``id_embeds``
(+ ``reference_quality``) from :func:`~hifi_portrait.loaders.instantid.instantid_embeddings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hifi_portrait.errors import ConfigError, LandmarkError
from hifi_portrait.landmarks.generate import Placement, TargetAttributes
from hifi_portrait.landmarks.group import GroupLayout, layout_group, render_group

__all__ = ["GroupPortraits", "Person", "generate_group", "is_instantid"]


@dataclass
class Person:
    """One person of a group portrait.

    Attributes:
        references: photos (paths, PIL images, RGB arrays), analysed with the pipeline's face analyzer; or
        faces: their analyses (:class:`~hifi_portrait.face.types.FaceAnalysis`), used for the face shape (and the
            ID tokens unless ``id_embeds`` is given).
        id_embeds, reference_quality: identity vectors ``(N, D)`` (and weights) instead of the faces' own; what
            InstantID mode takes (:func:`~hifi_portrait.loaders.instantid.instantid_embeddings`).
        target: pose and expression (default frontal, neutral).
        placement: an explicit :class:`~hifi_portrait.landmarks.generate.Placement` (box); None = automatic.
        relative_size: face size relative to the others in the automatic layout.
    """

    references: Sequence[Any] | None = None
    faces: Sequence[Any] | None = None
    id_embeds: Any = None
    reference_quality: Any = None
    target: TargetAttributes | None = None
    placement: Placement | None = None
    relative_size: float = 1.0


@dataclass
class GroupPortraits:
    """What :func:`generate_group` made: images, the map used, the regions and the layout."""

    images: Any
    landmark_map: np.ndarray
    regions: np.ndarray
    layout: GroupLayout
    id_tokens: list[Any] = field(default_factory=list)


def is_instantid(pipe: Any) -> bool:
    """Whether the pipeline runs InstantID (IdentityNet reads the ID tokens)."""
    context = getattr(pipe, "controlnet_context", "text")
    return "id_tokens" in (context if isinstance(context, (list, tuple)) else [context])


def _placements(people: Sequence[Person], layout: str | Sequence[Placement] | None) -> Any:
    explicit = [p.placement for p in people]
    if layout is not None and not isinstance(layout, str):
        if any(e is not None for e in explicit):
            raise ConfigError("give the boxes either as layout= or as each Person's placement, not both")
        return list(layout)
    if all(e is not None for e in explicit):
        if layout == "auto":
            raise ConfigError("layout='auto' but every person has an explicit placement: drop one of the two")
        return explicit
    if any(e is not None for e in explicit):
        raise ConfigError("some people have an explicit placement and some not: give one to everyone, or none")
    if layout not in (None, "auto"):
        raise ConfigError(f"layout must be 'auto' or one Placement per person, not {layout!r}")
    return "auto"


def generate_group(
    pipe: Any,
    people: Sequence[Person],
    prompt: str | None = None,
    size: tuple[int, int] = (1024, 1024),
    layout: str | Sequence[Placement] | None = None,
    style: str | None = None,
    face_analyzer: Any = None,
    **pipe_kwargs: Any,
) -> GroupPortraits:
    """Generate a portrait of several people (see the module docstring).

    Args:
        pipe: a :class:`~hifi_portrait.pipelines.StableDiffusionXLHiFiPortraitPipeline` with an adapter (or
            InstantID) loaded.
        people: 1 to 4 people for the automatic layout, any number with explicit placements.
        size: canvas ``(width, height)`` (multiples of 8).
        layout: ``"auto"`` (default when no person has a placement) or one Placement per person.
        style: map style (default: ``"instantid"`` in InstantID mode, else ``"hifi"``).
        pipe_kwargs: other arguments of the pipeline call (``num_inference_steps``, ``generator``, ``id_scale``...).

    Raises:
        ConfigError: bad combinations (no people, mixed placements, references and faces both given...).
        LandmarkError: a layout that cannot be made (5+ people automatically, a person hidden by nearer ones).
    """
    people = list(people)
    if not people:
        raise ConfigError("a group portrait needs at least one person")
    if size[0] % 8 or size[1] % 8:
        raise ConfigError(f"size {size}: width and height must be multiples of 8")
    for key in ("faces", "reference_images", "id_embeds", "id_tokens", "id_regions", "landmark_image"):
        if key in pipe_kwargs:
            raise ConfigError(f"{key}= is made per person by generate_group: give it through Person, not directly")
    instantid = is_instantid(pipe)
    style = style or ("instantid" if instantid else "hifi")
    faces_of = []
    for i, person in enumerate(people):
        if person.references is not None and person.faces is not None:
            raise ConfigError(f"person {i + 1}: give references or faces, not both")
        if person.faces is not None:
            faces = list(person.faces)
        elif person.references is not None:
            faces = pipe._analyze_images(list(person.references), face_analyzer)
        else:
            raise ConfigError(f"person {i + 1} has no references: give references= (photos) or faces=")
        if not faces:
            raise ConfigError(f"person {i + 1} has no usable reference face")
        faces_of.append(faces)

    from hifi_portrait.landmarks import fit_identity_shape

    shapes = [fit_identity_shape(faces) for faces in faces_of]
    placements = _placements(people, layout)
    relative = [p.relative_size for p in people] if placements == "auto" else None
    try:
        group = layout_group(shapes, [p.target for p in people], size=size, placements=placements,
                             relative_sizes=relative)  # fmt: skip
    except LandmarkError as exc:
        raise ConfigError(str(exc)) from None
    landmark_map = group.render(style)

    device = pipe._execution_device
    tokens = []
    for person, faces in zip(people, faces_of, strict=True):
        if person.id_embeds is not None:
            tokens.append(
                pipe.encode_id_tokens(
                    id_embeds=person.id_embeds, reference_quality=person.reference_quality, device=device
                )
            )
        elif instantid:
            raise ConfigError(
                "InstantID mode needs each person's ArcFace embeddings: Person(id_embeds=..., reference_quality=...) "
                "from hifi_portrait.loaders.instantid.instantid_embeddings"
            )
        else:
            tokens.append(pipe.encode_id_tokens(faces=faces, device=device))

    width, height = size
    call = dict(prompt=prompt, id_tokens=tokens, id_regions=group.regions, height=height, width=width)
    if instantid:  # IdentityNet runs once per person, on its own keypoints, routed to its region
        call["image"] = landmark_map
        call["id_region_images"] = [render_group([gen], style) for gen in group.people]
    else:
        call["landmark_image"] = landmark_map
    out = pipe(**call, **pipe_kwargs)
    return GroupPortraits(
        images=out.images, landmark_map=landmark_map, regions=group.regions, layout=group, id_tokens=tokens
    )
