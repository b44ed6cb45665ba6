"""Optional dependencies: the packages only some backends need, installed through an extra.

The core (collections, encoders, FAISS and BM25 search, PDFs, evaluation) needs only the required
dependencies. Running a Qwen-VL model locally needs the ``mllm`` extra (qwen-vl-utils, which also
pulls in PyAV); talking to a vLLM / SGLang server needs the ``openai`` extra; indexing on Ray Data
(``mmrank index --ray``) needs the ``ray`` extra. A missing one raises one error that names the extra.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from mmrank.errors import MissingDependencyError

# module -> (package on PyPI, the mmrank extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "qwen_vl_utils": ("qwen-vl-utils", "mllm"),
    "openai": ("openai", "openai"),
    "ray": ("ray", "ray"),
    "ray.data": ("ray", "ray"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional ``module`` (one of :data:`EXTRAS`), or raise MissingDependencyError saying
    that ``purpose`` needs it and which extra installs it."""
    try:
        return import_module(module)
    except ImportError as error:
        package, extra = EXTRAS[module]
        raise MissingDependencyError(
            f"{purpose} needs the package {package}, which this installation lacks: "
            f"pip install 'mmrank[{extra}]'."
        ) from error
