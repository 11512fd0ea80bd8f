"""Typed errors. Every error says what was wrong, with which file, and what to do about it."""

from __future__ import annotations


class HiFiPortraitError(Exception):
    """Base class of every error raised on purpose by hifi-portrait."""


class ImageLoadError(HiFiPortraitError):
    """A file could not be read as an image (missing, empty, truncated, corrupt, not an image, too large)."""


class FaceNotFoundError(HiFiPortraitError):
    """No usable face was found in an image."""


class MultipleFacesError(HiFiPortraitError):
    """Several faces were found and the policy asked for exactly one."""


class UnusableFaceError(HiFiPortraitError):
    """A face was found but is too small, too blurred or too occluded to be used."""


class NoUsableReferencesError(HiFiPortraitError):
    """Nothing usable remains of a set of reference photos."""


class ModelFilesMissingError(HiFiPortraitError):
    """Model files the user must supply are missing; the message names them and where they come from."""


class WeightsMismatchError(HiFiPortraitError):
    """A weights file has missing or unexpected keys (the message names them)."""


class AdapterFormatError(WeightsMismatchError):
    """A weights file (hifi-portrait adapter, InstantID checkpoint) is malformed: bad header, metadata of the wrong
    type or out of bounds, unsupported tensor dtype, unknown layer (the message names the file and the field)."""


class ConfigError(HiFiPortraitError):
    """A configuration file or option is invalid (unknown key, bad value)."""


class LandmarkError(HiFiPortraitError):
    """Bad landmark-generation input: unknown preset or blendshape, empty reference set, bad angle."""


class DatasetError(HiFiPortraitError):
    """A dataset is missing, empty or malformed."""


class OutputError(HiFiPortraitError):
    """An output folder cannot be written: disk full, quota exceeded, read-only, no permission (names the folder)."""


class AttentionProcessorError(HiFiPortraitError):
    """The UNet's ID attention processors were replaced by processors they cannot be combined with (named)."""
