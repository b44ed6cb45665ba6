"""The handle on a stage's vision-language model: what it names without loading anything (caption
caches are keyed by its identity, so those strings are written out by hand), how it loads, and what
it does when the model cannot be loaded."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from mmrank.errors import InputError, ModelReplyError, ModelUnavailableError
from mmrank.mllm.handle import ModelHandle

URL = "http://gpu:8000/v1"


class FakeModel:
    """A ready model object: only its name (and, when given, its source) matter to the handle."""

    def __init__(self, name: str, source: str | None = None) -> None:
        self.name = name
        if source is not None:
            self.source = source


class NamelessSource(FakeModel):
    source = None


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every call to mmrank.mllm.shared_mllm, answered with ``"loaded"`` instead of a model."""
    calls: list[tuple] = []

    def shared(model, *, url=None, **options):
        calls.append((model, url, options))
        return "loaded"

    monkeypatch.setattr("mmrank.mllm.shared_mllm", shared)
    return calls


def unavailable(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def shared(model, *, url=None, **options):
        raise error

    monkeypatch.setattr("mmrank.mllm.shared_mllm", shared)


# ----------------------------------------------------------------------- identity
def test_identity_of_names_is_server_model_and_sorted_options(asked) -> None:
    assert ModelHandle().identity == "local|Qwen/Qwen2.5-VL-3B-Instruct|"
    assert ModelHandle("org/model").identity == "local|org/model|"
    assert ModelHandle("/models/qwen").identity == "local|/models/qwen|"
    assert ModelHandle(None, default="i2vec/MM-R5", options={"max_pixels": 1003520}).identity == (
        "local|i2vec/MM-R5|max_pixels=1003520")
    assert ModelHandle("org/model", options={"max_pixels": 1003520, "dtype": "float32", "device": "cpu"}).identity == (
        "local|org/model|device='cpu',dtype='float32',max_pixels=1003520")
    assert ModelHandle("org/model", options={"min_pixels": None, "batch_size": 2}).identity == (
        "local|org/model|batch_size=2,min_pixels=None")
    assert ModelHandle("served-name", url=URL).identity == "http://gpu:8000/v1|served-name|"
    # No model named for a server: the handle cannot know the server's first model, and writes the
    # global default (even where the stage's own default differs).
    assert ModelHandle(None, url=URL).identity == "http://gpu:8000/v1|Qwen/Qwen2.5-VL-3B-Instruct|"
    assert ModelHandle(None, url=URL, default="i2vec/MM-R5", options={"max_pixels": 1003520}).identity == (
        "http://gpu:8000/v1|Qwen/Qwen2.5-VL-3B-Instruct|max_pixels=1003520")
    assert asked == []  # nothing was loaded


def test_identity_of_a_loaded_model_is_its_name() -> None:
    model = FakeModel("hf:/models/qwen", source="/models/qwen")
    assert ModelHandle(model).identity == "hf:/models/qwen"
    assert ModelHandle(model, url=URL, options={"max_pixels": 4}).identity == "hf:/models/qwen"


def test_identity_of_the_tiny_model(tiny_mllm, tiny_mllm_dir) -> None:
    assert ModelHandle(tiny_mllm).identity == tiny_mllm.name == f"hf:{tiny_mllm_dir}"
    assert ModelHandle(str(tiny_mllm_dir)).identity == f"local|{tiny_mllm_dir}|"


# ---------------------------------------------------------- names and references
def test_model_name_rules() -> None:
    assert ModelHandle("org/model").model_name == "org/model"
    assert ModelHandle("org/model", url=URL, default="d").model_name == "org/model"
    assert ModelHandle(None, default="i2vec/MM-R5").model_name == "i2vec/MM-R5"
    assert ModelHandle(None, url=URL, default="i2vec/MM-R5").model_name is None  # the server chooses
    assert ModelHandle().model_name is None  # the backend's default
    assert ModelHandle(FakeModel("ready"), default="d").model_name is None  # nothing to load


def test_loaded_and_reference() -> None:
    with_source = FakeModel("hf:/models/qwen", source="/models/qwen")
    assert ModelHandle(with_source).loaded and ModelHandle(with_source).reference == "/models/qwen"
    assert ModelHandle(FakeModel("openai:served")).reference == "openai:served"  # no source: its name
    assert ModelHandle(NamelessSource("openai:served")).reference == "openai:served"
    assert not ModelHandle("org/model").loaded and ModelHandle("org/model").reference == "org/model"
    assert not ModelHandle().loaded and ModelHandle(default="d").reference is None  # the default is not written


# ---------------------------------------------------------------------- loading
def test_get_returns_a_loaded_model_as_is(asked) -> None:
    model = FakeModel("ready")
    assert ModelHandle(model, url=URL, options={"device": "cpu"}).get() is model
    assert asked == []


def test_get_asks_shared_mllm_for_names(asked) -> None:
    assert ModelHandle("org/model", options={"device": "cpu", "max_pixels": 4}).get() == "loaded"
    assert ModelHandle(None, default="i2vec/MM-R5").get() == "loaded"
    assert ModelHandle(None, url=URL, default="i2vec/MM-R5").get() == "loaded"
    assert ModelHandle("served", url=URL).get() == "loaded"
    assert ModelHandle().get() == "loaded"
    assert asked == [("org/model", None, {"device": "cpu", "max_pixels": 4}),
                     ("i2vec/MM-R5", None, {}),
                     (None, URL, {}),  # the server's first model
                     ("served", URL, {}),
                     (None, None, {})]


def test_available_when_the_model_loads(asked, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        assert ModelHandle("org/model", on_unavailable="keep-order").available("pointwise") == ("loaded", None)
        model = FakeModel("ready")
        assert ModelHandle(model).available() == (model, None)
    assert caplog.records == []


def test_available_with_keep_order_reports_why_and_warns(monkeypatch, caplog) -> None:
    unavailable(monkeypatch, ModelUnavailableError("Vision-language model 'org/model' is not available: gone."))
    handle = ModelHandle("org/model", on_unavailable="keep-order")
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        model, problem = handle.available("my-stage")
    assert model is None
    assert problem == "Vision-language model 'org/model' is not available: gone."
    [record] = caplog.records
    assert (record.name, record.levelname) == ("mmrank", "WARNING")
    assert record.getMessage() == ("my-stage: keeping the incoming order: Vision-language model 'org/model' "
                                   "is not available: gone.")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        handle.available()
    assert caplog.records[0].getMessage().startswith("stage: keeping the incoming order: ")


def test_available_with_fail_raises(monkeypatch, caplog) -> None:
    unavailable(monkeypatch, ModelUnavailableError("gone"))
    with caplog.at_level(logging.WARNING, logger="mmrank"), pytest.raises(ModelUnavailableError, match="^gone$"):
        ModelHandle("org/model", on_unavailable="fail").available("my-stage")
    assert caplog.records == []


def test_keep_order_is_the_default(monkeypatch, caplog) -> None:
    unavailable(monkeypatch, ModelUnavailableError("gone"))
    assert ModelHandle().on_unavailable == "keep-order"
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        assert ModelHandle("org/model").available("my-stage") == (None, "gone")
    assert [record.getMessage() for record in caplog.records] == ["my-stage: keeping the incoming order: gone"]


def test_unavailable_warns_or_raises_for_a_fault_during_a_call(caplog) -> None:
    error = ModelReplyError("The MLLM server at http://gpu:8000/v1 sent a reply that is not an OpenAI chat "
                            "completion: empty 'choices'.")
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        assert ModelHandle("served", url=URL).unavailable(error, "grid") == str(error)
    [record] = caplog.records
    assert record.getMessage() == f"grid: keeping the incoming order: {error}"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmrank"), pytest.raises(ModelReplyError) as raised:
        ModelHandle("served", url=URL, on_unavailable="fail").unavailable(error, "grid")
    assert raised.value is error and caplog.records == []


def test_keep_order_covers_an_unavailable_model_only(monkeypatch) -> None:
    unavailable(monkeypatch, InputError("dtype must be 'auto' or one of ..."))
    with pytest.raises(InputError, match="dtype must be"):
        ModelHandle("org/model", on_unavailable="keep-order").available("my-stage")


def test_a_real_missing_folder(tmp_path) -> None:
    folder = str(tmp_path / "no-such-model")
    model, problem = ModelHandle(folder, on_unavailable="keep-order").available("s")
    assert model is None and folder in problem and "folder does not exist" in problem
    with pytest.raises(ModelUnavailableError, match="no-such-model"):
        ModelHandle(folder, on_unavailable="fail").available("s")


# ------------------------------------------------------------------- the handle
def test_on_unavailable_is_checked() -> None:
    with pytest.raises(InputError, match="on_unavailable must be 'fail' or 'keep-order', got 'skip'"):
        ModelHandle("org/model", on_unavailable="skip")


def test_the_handle_is_frozen() -> None:
    handle = ModelHandle("org/model", url=URL, options={"device": "cpu"})
    for field, value in (("model", "other"), ("url", None), ("options", {}), ("on_unavailable", "keep-order"),
                         ("default", "d")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(handle, field, value)
    assert (handle.model, handle.url, handle.options) == ("org/model", URL, {"device": "cpu"})
    assert ModelHandle("m", options={"a": 1}) == ModelHandle("m", options={"a": 1}) != ModelHandle("m")
