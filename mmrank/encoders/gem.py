"""A CNN (any timm backbone) + GeM-family pooling as an image encoder: SuperGlobal's global features.

Per image and scale: the backbone's last feature map -> (Regional-)GeM / GeM+ -> L2-normalise ->
optional projection (CVNet's 2048 -> 2048 head, from a checkpoint); scales are combined by
Scale-GeM; an optional whitening follows; the output is unit-norm float32.

Poolings by name: ``gem`` (p = 3), ``gem+`` (p = 4.6), ``regional-gem`` (Regional-GeM + GeM+),
``scale-gem`` (GeM+ at scales 1/sqrt(2), 1, sqrt(2), max-combined) and ``superglobal`` (all three).

CVNet-style checkpoints (pycls ResNet names, e.g. ``encoder_q.s1.b1.f.a.weight``) load from a
local file through :func:`map_pycls_resnet_keys`; timm state dicts load as they are.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrank.encoders.base import resolve_device
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.images import open_rgb
from mmrank.types import ImageInput

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

DEFAULT_BACKBONE = "resnet50"
DEFAULT_IMAGE_SIZE = 1024
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class PoolingPreset:
    p: float
    regional: bool
    scales: tuple[float, ...]


POOLINGS: dict[str, PoolingPreset] = {
    "gem": PoolingPreset(p=3.0, regional=False, scales=(1.0,)),
    "gem+": PoolingPreset(p=4.6, regional=False, scales=(1.0,)),
    "regional-gem": PoolingPreset(p=4.6, regional=True, scales=(1.0,)),
    "scale-gem": PoolingPreset(p=4.6, regional=False, scales=(2 ** -0.5, 1.0, 2 ** 0.5)),
    "superglobal": PoolingPreset(p=4.6, regional=True, scales=(2 ** -0.5, 1.0, 2 ** 0.5)),
}


class GemEncoder:
    """Unit-norm image vectors from a timm CNN with GeM-family pooling (see the module docstring).

    ``pretrained`` loads timm's ImageNet weights (downloaded once, then cached); ``checkpoint``
    loads a local state dict instead (safetensors, or a torch file read with ``weights_only``).
    ``whitening`` is an ``.npz`` with ``mean`` (D,) and ``projection`` (D', D), applied as
    ``projection @ (v - mean)``. Images are resized so their longer side is ``image_size``.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, pooling: str = "superglobal",
                 pretrained: bool = True, checkpoint: str | Path | None = None,
                 whitening: str | Path | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                 scale_p: float = float("inf"), device: str | None = "auto", dtype: str = "float32",
                 progress: bool = False) -> None:
        if pooling not in POOLINGS:
            raise InputError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        if dtype not in _DTYPES:
            raise InputError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}.")
        if image_size < 32:
            raise InputError(f"image_size must be at least 32 pixels, got {image_size}.")
        self.backbone_name, self.pooling_name = backbone, pooling
        self.preset = POOLINGS[pooling]
        self.checkpoint = Path(checkpoint).expanduser().resolve() if checkpoint else None
        self.pretrained = pretrained and self.checkpoint is None
        self.image_size, self.scale_p = image_size, scale_p
        self.device, self.dtype, self.progress = resolve_device(device), dtype, progress
        self.name = gem_identity(backbone, pooling, self.pretrained, self.checkpoint, image_size)
        self._backbone, self._mean, self._std = self._load_backbone()
        self._projection = self._load_checkpoint() if self.checkpoint else None
        self._pool, self._combine = self._build_pooling()
        self._whitening = _load_whitening(whitening) if whitening else None
        self.dim = self._output_dim()

    @classmethod
    def from_identity(cls, reference: str, *, batch_size: int | None = None, **options: Any) -> GemEncoder:
        """The encoder named ``gem:<reference>`` (see :func:`gem_identity`). ``batch_size`` is
        accepted for symmetry with other encoders and ignored: images differ in size, so they are
        encoded one at a time."""
        return cls(**parse_gem_identity(reference), **options)

    def __repr__(self) -> str:
        return f"GemEncoder({self.name!r}, device={self.device!r})"

    # ------------------------------------------------------------------ loading
    def _load_backbone(self):
        import timm
        import torch

        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # random weights (tests, demos) are the same on every load
                model = timm.create_model(self.backbone_name, pretrained=self.pretrained, num_classes=0,
                                          global_pool="")
        except RuntimeError as error:
            if "Unknown model" in str(error):
                close = difflib.get_close_matches(self.backbone_name, timm.list_models(), n=5, cutoff=0.5)
                hint = f" Close names: {', '.join(close)}." if close else ""
                raise InputError(f"timm has no backbone named {self.backbone_name!r}.{hint}") from None
            raise self._unavailable(str(error)) from error
        except OSError as error:
            raise self._unavailable(str(error)) from error
        config = model.pretrained_cfg
        mean = torch.tensor(config.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        std = torch.tensor(config.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        dtype = getattr(torch, self.dtype)
        return model.eval().to(self.device, dtype), mean.to(self.device, dtype), std.to(self.device, dtype)

    def _unavailable(self, reason: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"Cannot load the ImageNet weights of timm backbone {self.backbone_name!r}: "
            f"{reason.strip().rstrip('.')}. Run once with internet access (timm caches the weights "
            "in the Hugging Face cache, HF_HOME), or pass a local checkpoint file.")

    def _load_checkpoint(self):
        import torch

        state = read_state_dict(self.checkpoint)
        state = map_pycls_resnet_keys(state) if any(k.startswith(("stem.", "s1.")) for k in state) else state
        head = {k.removeprefix("head.fc."): v for k, v in state.items() if k.startswith("head.fc.")}
        own = self._backbone.state_dict()
        backbone = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(backbone))
        if missing:
            raise InputError(
                f"{self.checkpoint}: not a checkpoint of {self.backbone_name}: {len(missing)} of its "
                f"weights are missing, e.g. {', '.join(missing[:3])}.")
        self._backbone.load_state_dict(backbone)
        if not head:
            return None
        projection = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0], bias="bias" in head)
        projection.load_state_dict(head)
        return projection.eval().to(self.device, getattr(torch, self.dtype))

    def _build_pooling(self):
        from mmrank.encoders.pooling import GeM, RegionalGeM, ScaleGeM

        pool = GeM(p=self.preset.p, eps=1e-8)
        if self.preset.regional:
            pool = RegionalGeM(pool=pool)
        return pool, ScaleGeM(self.scale_p)

    def _output_dim(self) -> int:
        pooled = self._projection.out_features if self._projection is not None else self._backbone.num_features
        if self._whitening is None:
            return int(pooled)
        mean, projection = self._whitening
        if mean.shape[0] != pooled:
            raise InputError(f"The whitening expects {mean.shape[0]}-dimensional vectors; this encoder "
                             f"pools {pooled} dimensions.")
        return int(projection.shape[0])

    # ----------------------------------------------------------------- encoding
    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(len(images), dim) unit-norm float32 vectors; images are processed one at a time
        (sizes differ), each at every scale of the pooling."""
        from tqdm.auto import tqdm

        if isinstance(images, (str, Path)):
            raise InputError(f"encode_images expects a list of images, got the single path {images!r}.")
        vectors = [self._encode_one(image) for image in tqdm(images, desc="Encoding images", unit="image",
                                                              disable=not self.progress)]
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)

    def _encode_one(self, image: ImageInput) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        pixels = self.preprocess(open_rgb(image))
        with torch.inference_mode():
            per_scale = []
            for scale in self.preset.scales:
                size = [max(1, int(pixels.shape[-2] * scale)), max(1, int(pixels.shape[-1] * scale))]
                scaled = pixels if scale == 1.0 else F.interpolate(pixels, size=size, mode="bilinear",
                                                                   antialias=True, align_corners=False)
                vector = F.normalize(self._pool(self._backbone.forward_features(scaled)).float(), dim=-1)
                if self._projection is not None:
                    vector = self._projection(vector.to(self._projection.weight.dtype)).float()
                per_scale.append(vector)
            vector = per_scale[0] if len(per_scale) == 1 else self._combine(per_scale)
            vector = vector[0].cpu().numpy().astype(np.float32)
        if self._whitening is not None:
            mean, projection = self._whitening
            vector = projection @ (vector - mean)
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)

    def preprocess(self, image: PILImage.Image) -> torch.Tensor:
        """An RGB picture as the backbone sees it: resized so its longer side is ``image_size``,
        normalised, as a (1, 3, H, W) tensor on the encoder's device."""
        import torch

        scale = self.image_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = image.resize(size, resample=3)  # bicubic
        array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        array = array.to(self.device, self._mean.dtype)
        return (array - self._mean) / self._std


def gem_identity(backbone: str, pooling: str, pretrained: bool, checkpoint: Path | None,
                 image_size: int = DEFAULT_IMAGE_SIZE) -> str:
    """The stable name of a GeM encoder, e.g. ``gem:resnet50/superglobal`` (ImageNet weights),
    ``gem:resnet101/gem+;checkpoint=/models/cvnet.pth`` or ``gem:resnet18/gem;random``."""
    name = f"gem:{backbone}/{pooling}"
    if checkpoint is not None:
        name += f";checkpoint={checkpoint}"
    elif not pretrained:
        name += ";random"
    if image_size != DEFAULT_IMAGE_SIZE:
        name += f";size={image_size}"
    return name


def parse_gem_identity(identity: str) -> dict[str, Any]:
    """Constructor arguments for :class:`GemEncoder` from :func:`gem_identity`'s name (``gem:``
    prefix optional; a bare ``gem:resnet50`` means the superglobal pooling)."""
    body = identity.removeprefix("gem:")
    head, *options = body.split(";")
    backbone, _, pooling = head.partition("/")
    if not backbone:
        raise InputError(f"{identity!r}: expected gem:<timm backbone>[/<pooling>], e.g. gem:resnet50/superglobal.")
    arguments: dict[str, Any] = {"backbone": backbone, "pooling": pooling or "superglobal"}
    for option in options:
        key, _, value = option.partition("=")
        if key == "random" and not value:
            arguments["pretrained"] = False
        elif key == "checkpoint" and value:
            arguments["checkpoint"] = value
        elif key == "size" and value.isdigit():
            arguments["image_size"] = int(value)
        else:
            raise InputError(f"{identity!r}: unknown option {option!r} (known: random, checkpoint=PATH, size=N).")
    return arguments


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from a safetensors file or a torch checkpoint (read with ``weights_only=True``: no
    arbitrary code runs). Nested ``model_state`` / ``state_dict`` / ``model`` dicts and
    ``module.`` / ``encoder_q.`` prefixes are unwrapped."""
    import torch

    if not path.is_file():
        raise InputError(f"Checkpoint file not found: {path}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds; all mean "unreadable"
        raise InputError(f"{path}: not a readable weights file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}).") from None
    for key in ("model_state", "state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state dict).")
    return {re.sub(r"^(module\.)?(encoder_q\.)?", "", key): value for key, value in state.items()}


# pycls ResNet (CVNet, SuperGlobal) -> timm ResNet parameter names.
_PYCLS_RULES = (
    (r"^stem\.conv\.", "conv1."),
    (r"^stem\.bn\.", "bn1."),
    (r"^s(\d)\.b(\d+)\.proj\.", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.0."),
    (r"^s(\d)\.b(\d+)\.bn\.", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.1."),
    (r"^s(\d)\.b(\d+)\.f\.([abc])_bn\.", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.bn{'abc'.index(m[3]) + 1}."),
    (r"^s(\d)\.b(\d+)\.f\.([abc])\.", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.conv{'abc'.index(m[3]) + 1}."),
)


def map_pycls_resnet_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a pycls ResNet state dict (as in CVNet checkpoints) to timm's ResNet names.

    ``stem.conv/bn`` -> ``conv1/bn1``; ``sI.bJ.f.{a,b,c}`` -> ``layerI.(J-1).conv{1,2,3}`` (and
    ``_bn`` -> ``bn{1,2,3}``); ``sI.bJ.proj/bn`` -> ``layerI.(J-1).downsample.0/1``. Other keys
    (``head.fc`` and CVNet's reranking modules) keep their names.
    """
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _PYCLS_RULES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def _load_whitening(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as data:
            mean, projection = data["mean"].astype(np.float32), data["projection"].astype(np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: expected an .npz with arrays 'mean' (D,) and 'projection' (D', D) "
                         f"({error}).") from None
    if mean.ndim != 1 or projection.ndim != 2 or projection.shape[1] != mean.shape[0]:
        raise InputError(f"{path}: 'mean' must be (D,) and 'projection' (D', D); got {mean.shape} and "
                         f"{projection.shape}.")
    return mean, projection
