"""Errors raised by mmrank: one base class, a few precise subclasses."""

from __future__ import annotations


class MMRankError(Exception):
    """Base class of every error mmrank raises on purpose."""


class InputError(MMRankError, ValueError):
    """Bad input from the user: a missing path, an empty query, a malformed file."""


class CollectionError(MMRankError):
    """A collection folder that is missing, not a collection, corrupted, or used inconsistently."""


class EncoderMismatchError(CollectionError):
    """A query encoded by a different model than the one the collection was built with."""


class ModelUnavailableError(MMRankError):
    """A model that cannot be loaded (not downloaded, offline, of the wrong kind) or that stopped
    answering: a server that cannot be reached or answers with an error."""


class ModelReplyError(ModelUnavailableError):
    """A model server whose reply is not what its protocol promises (e.g. an HTML page or a chat
    completion without choices or logprobs)."""


class MissingDependencyError(MMRankError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def listing(values: list, limit: int = 5, *, quote: bool = True) -> str:
    """The first ``limit`` values for an error message, e.g. ``'a', 'b' and 3 more``."""
    shown = ", ".join(repr(v) if quote else str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def hugging_face_cache(*, hub: bool = False) -> str:
    """Where a missing Hugging Face model was looked for, for an error message: "the Hugging Face
    cache <folder>", then " with HF_HUB_OFFLINE=1" when offline, else " and on the Hub" if ``hub``."""
    from huggingface_hub import constants

    offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else " and on the Hub" if hub else ""
    return f"the Hugging Face cache {constants.HF_HUB_CACHE}{offline}"
