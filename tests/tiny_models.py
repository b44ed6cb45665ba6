"""Tiny random-weight models, built from configs, for tests and benchmarks that must run offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A CLIP small enough to build in a fraction of a second. The text tower keeps open_clip's
# default vocabulary (49408) and context length (77) so the BPE tokenizer bundled with open_clip
# works unchanged; everything else is shrunk.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a tiny open_clip model (config + seeded safetensors weights) into ``folder``.

    The folder loads with ``local-dir:<folder>``; the same seed always gives the same weights.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(folder / "open_clip_model.safetensors"))
    return folder
