"""The encoders of a collection's vector spaces, loaded once each from the names its manifest records."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmrank.encoders.base import Encoder
    from mmrank.manifest import Manifest


class BoundEncoders:
    """Per vector space of ``manifest``, the encoder that made its vectors: rebuilt from its recorded
    name on ``device`` when first asked for, or given ready-made through :meth:`use`."""

    def __init__(self, manifest: Manifest, device: str = "auto") -> None:
        self.manifest, self.device = manifest, device
        self._loaded: dict[str, Encoder] = {}

    def get(self, space: str) -> Encoder:
        """The encoder of ``space`` (CollectionError when the collection has no such space)."""
        if space not in self._loaded:
            from mmrank.encoders import load_encoder_by_name

            self._loaded[space] = load_encoder_by_name(self.manifest.space(space).encoder, device=self.device)
        return self._loaded[space]

    def use(self, space: str, encoder: Encoder) -> None:
        """Use an already loaded encoder for ``space``, after checking it is the one that built it."""
        self.manifest.check_encoder(space, encoder.name, encoder.dim)
        self._loaded[space] = encoder
