"""Optional dependencies: one MissingDependencyError that names the package and the extra."""

from __future__ import annotations

import re
import sys

import pytest
from tests.paths import REPO

from mmrank.errors import MissingDependencyError, MMRankError
from mmrank.optional import EXTRAS, require


def test_require_returns_the_module_when_it_is_installed() -> None:
    openai = pytest.importorskip("openai")
    assert require("openai", "anything") is openai


def test_a_missing_openai_package_names_the_openai_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrank.mllm.openai import OpenAICompatibleModel

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(MissingDependencyError) as caught:
        OpenAICompatibleModel("http://127.0.0.1:9")  # fails before any request is made
    message = str(caught.value)
    assert "needs the package openai, which this installation lacks" in message
    assert message.endswith("pip install 'mmrank[openai]'.")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, MMRankError)
    assert isinstance(caught.value.__cause__, ImportError)


def test_a_missing_qwen_vl_utils_names_the_mllm_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", None)
    with pytest.raises(MissingDependencyError) as caught:
        require("qwen_vl_utils", "X")
    assert str(caught.value) == ("X needs the package qwen-vl-utils, which this installation lacks: "
                                 "pip install 'mmrank[mllm]'.")
    # caught by code that handles any missing import
    with pytest.raises(ImportError, match=re.escape("mmrank[mllm]")):
        require("qwen_vl_utils", "X")


def test_the_extras_named_in_errors_exist_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert EXTRAS == {"qwen_vl_utils": ("qwen-vl-utils", "mllm"), "openai": ("openai", "openai"),
                      "ray": ("ray", "ray"), "ray.data": ("ray", "ray")}

    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for module, (package, extra) in EXTRAS.items():
        assert any(re.match(rf"{re.escape(package)}\b", requirement) for requirement in extras[extra]), module
