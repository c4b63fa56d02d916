"""Exceptions a caller can count: each carries a short, stable ``reason`` string.

Jobs skip a bad sample and count it by ``reason``; they never crash and never write a wrong view.
All of them are ``ValueError`` subclasses, so code that only cares about "bad input" can catch that.
"""

from __future__ import annotations


class _ReasonedError(ValueError):
    default_reason = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason: str = reason or self.default_reason


class BadImageError(_ReasonedError):
    """The bytes do not decode to an image under our decoding convention.

    Reasons: ``empty``, ``undecodable``, ``truncated``, ``too_many_pixels``, ``zero_size``,
    ``unsupported_mode``.
    """

    default_reason = "undecodable"


class AugmentationError(_ReasonedError):
    """A view cannot be sampled or replayed for this image."""

    default_reason = "augmentation_failed"


class ImageTooSmallError(AugmentationError):
    """The decoded image is below the minimum side length a view is sampled from."""

    default_reason = "image_too_small"


class InvalidParamsError(AugmentationError):
    """Stored parameters are malformed or do not fit the image they are replayed on.

    Reasons: ``malformed_params``, ``box_outside_image``, ``unknown_op``, ``bad_magnitude``,
    ``erase_outside_view``.
    """

    default_reason = "malformed_params"


class UnsupportedParamVersionError(AugmentationError):
    """The parameters were written for an op table this code does not know."""

    default_reason = "unsupported_param_version"
