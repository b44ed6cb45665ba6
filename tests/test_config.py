"""Component configs: plain YAML values, safe reading, ordered writing, and dotted-key overrides."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmrank.config import apply_overrides, dataclass_options, plain, read_yaml, to_yaml
from mmrank.errors import InputError


# ---------------------------------------------------------------- plain
def test_plain_turns_tuples_and_nested_sequences_into_lists() -> None:
    value = plain((1, [2, (3, "x")], ()))
    assert value == [1, [2, [3, "x"]], []]
    assert type(value) is list and type(value[1][1]) is list


def test_plain_turns_mappings_into_dicts_with_string_keys_in_order() -> None:
    from types import MappingProxyType

    value = plain(MappingProxyType({"z": (1, 2), 3: {"inner": Path("/data/x.sqlite")}, "a": None}))
    assert value == {"z": [1, 2], "3": {"inner": "/data/x.sqlite"}, "a": None}
    assert type(value) is dict and list(value) == ["z", "3", "a"]


def test_plain_writes_paths_as_strings() -> None:
    assert plain(Path("captions") / "cache.sqlite") == str(Path("captions") / "cache.sqlite")
    assert plain([Path("/a"), Path("b")]) == ["/a", "b"]


@pytest.mark.parametrize("scalar", [None, True, False, 0, 7, -2.5, "", "text"])
def test_plain_keeps_scalars_as_they_are(scalar: object) -> None:
    result = plain(scalar)
    assert result == scalar and type(result) is type(scalar)


def test_plain_refuses_an_arbitrary_object_naming_the_option() -> None:
    class Model:
        pass

    with pytest.raises(InputError, match=r"Option 'model' holds a Model, which a config cannot hold"):
        plain(Model(), "model")
    with pytest.raises(InputError, match=r"Option 'model_options\.device' holds a object"):
        plain({"dtype": "float32", "device": object()}, "model_options")
    with pytest.raises(InputError, match=r"Option 'choices' holds a set"):
        plain(["Yes", {"No"}], "choices")


def test_plain_numpy_float_is_written_by_to_yaml() -> None:
    value = plain(np.float64(0.25), "alpha")
    assert yaml.safe_load(to_yaml({"alpha": value})) == {"alpha": 0.25}


# ---------------------------------------------------------------- dataclass_options
@dataclasses.dataclass
class _Stage:
    name: str = "stage"
    depth: int = 20
    choices: tuple[str, ...] = ("Yes", "No")
    cache: Path | bool = Path("/tmp/cache.sqlite")
    model: object = None
    loaded: object = dataclasses.field(default=None, init=False)


def test_dataclass_options_gives_init_fields_only_in_declaration_order_as_plain_values() -> None:
    stage = _Stage(depth=5)
    stage.loaded = object()  # not an option: never written, so never refused
    options = dataclass_options(stage)
    assert list(options) == ["name", "depth", "choices", "cache", "model"]
    assert options == {"name": "stage", "depth": 5, "choices": ["Yes", "No"], "cache": "/tmp/cache.sqlite",
                       "model": None}


def test_dataclass_options_replacements_take_the_place_of_fields() -> None:
    stage = _Stage(model=object())
    with pytest.raises(InputError, match="Option 'model' holds a object"):
        dataclass_options(stage)
    options = dataclass_options(stage, model="Qwen/Qwen2.5-VL-3B-Instruct", choices=("A", "B"))
    assert options["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert options["choices"] == ["A", "B"]  # replacements are made plain too
    assert stage.choices == ("Yes", "No")  # the component is left alone
    assert list(options) == ["name", "depth", "choices", "cache", "model"]


# ---------------------------------------------------------------- read_yaml
def test_read_yaml_reads_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nretriever:\n  paths: [text]\n  depth: 5\nrerankers: []\n", encoding="utf-8")
    assert read_yaml(path) == {"name": "p", "retriever": {"paths": ["text"], "depth": 5}, "rerankers": []}


def test_read_yaml_refuses_python_object_tags_and_runs_nothing(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    calls: list[str] = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML") as caught:
        read_yaml(path)
    assert str(path) in str(caught.value)
    assert "python/object/apply:os.system" in str(caught.value)
    assert calls == [] and not marker.exists()


def test_read_yaml_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("retriever: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}: not valid YAML")):
        read_yaml(path)


def test_read_yaml_unreadable_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputError, match=re.escape(f"{missing}: cannot read it")):
        read_yaml(missing)
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=re.escape(f"{binary}: cannot read it")):
        read_yaml(binary)


# ---------------------------------------------------------------- to_yaml
def test_to_yaml_keeps_key_order_and_reads_back_equal() -> None:
    config = {
        "name": "zeta",
        "description": "Café pages — ünïcode kept",
        "retriever": {"paths": ["text", "bm25"], "rrf_k": 60, "depth": 100, "alpha": 0.8, "weights": None},
        "rerankers": [{"type": "pointwise", "name": "yes-no", "depth": 20, "choices": ["Yes", "No"]}],
    }
    text = to_yaml(config)
    assert yaml.safe_load(text) == config
    top_level = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "-"))]
    assert top_level == ["name", "description", "retriever", "rerankers"]
    assert text.index("rrf_k") < text.index("depth") < text.index("alpha") < text.index("weights")
    assert text.index("type: pointwise") < text.index("name: yes-no") < text.index("depth: 20")
    assert "Café pages — ünïcode kept" in text
    # "Yes" stays a string, not YAML 1.1's boolean.
    assert yaml.safe_load(text)["rerankers"][0]["choices"] == ["Yes", "No"]


# ---------------------------------------------------------------- apply_overrides
def base_config() -> dict:
    return {
        "name": "p",
        "description": "two stages",
        "retriever": {"paths": ["text", "bm25"], "depth": 100},
        "rerankers": [
            {"type": "pointwise", "depth": 20, "model_options": {"max_pixels": 1000}},
            {"type": "grid", "name": "final", "depth": 9},
        ],
    }


def test_overrides_of_name_and_description() -> None:
    result = apply_overrides(base_config(), {"name": "renamed", "description": "new words"})
    assert result == {**base_config(), "name": "renamed", "description": "new words"}


def test_overrides_of_retriever_options_change_and_add_options() -> None:
    result = apply_overrides(base_config(), {"retriever.depth": 7, "retriever.fusion": "score"})
    assert result["retriever"] == {"paths": ["text", "bm25"], "depth": 7, "fusion": "score"}
    assert result["rerankers"] == base_config()["rerankers"]


def test_retriever_override_without_a_retriever_section() -> None:
    assert apply_overrides({"name": "p"}, {"retriever.depth": 3}) == {"name": "p", "retriever": {"depth": 3}}


def test_stage_override_by_name() -> None:
    result = apply_overrides(base_config(), {"final.depth": 4, "final.tile": 224})
    assert result["rerankers"][1] == {"type": "grid", "name": "final", "depth": 4, "tile": 224}
    assert result["rerankers"][0] == base_config()["rerankers"][0]


def test_stage_override_by_type_when_the_stage_has_no_name() -> None:
    result = apply_overrides(base_config(), {"pointwise.depth": 5})
    assert result["rerankers"][0] == {"type": "pointwise", "depth": 5, "model_options": {"max_pixels": 1000}}
    assert result["rerankers"][1] == base_config()["rerankers"][1]


def test_a_named_stage_is_not_found_by_its_type() -> None:
    with pytest.raises(InputError, match=r"'grid' names no stage; stages: pointwise, final"):
        apply_overrides(base_config(), {"grid.depth": 4})


def test_stage_override_by_position() -> None:
    result = apply_overrides(base_config(), {"0.depth": 11, "1.depth": 3})
    assert [stage["depth"] for stage in result["rerankers"]] == [11, 3]
    assert [stage["type"] for stage in result["rerankers"]] == ["pointwise", "grid"]


def test_overrides_leave_the_input_config_alone() -> None:
    config = base_config()
    before = copy.deepcopy(config)
    result = apply_overrides(config, {"name": "x", "retriever.depth": 1, "pointwise.model_options": {"a": 1},
                                      "final.depth": 2, "1.tile": 3})
    assert config == before
    assert result["rerankers"][0] is not config["rerankers"][0]
    assert result["retriever"] is not config["retriever"]


def test_an_override_value_is_taken_as_given() -> None:
    result = apply_overrides(base_config(), {"pointwise.model_options": {"max_pixels": 5, "dtype": "float32"},
                                             "retriever.paths": ["bm25"]})
    assert result["rerankers"][0]["model_options"] == {"max_pixels": 5, "dtype": "float32"}
    assert result["retriever"]["paths"] == ["bm25"]


def test_further_parts_set_one_key_inside_a_mapping_option() -> None:
    config = base_config()
    result = apply_overrides(config, {"pointwise.model_options.dtype": "float32", "final.model_options.max_pixels": 9,
                                      "0.model_options.max_pixels": 5})
    assert result["rerankers"][0]["model_options"] == {"max_pixels": 5, "dtype": "float32"}
    assert result["rerankers"][1]["model_options"] == {"max_pixels": 9}  # created where it was missing
    assert config == base_config()  # the nested mapping of the input is not changed


def test_further_parts_under_an_option_that_is_not_a_mapping_are_refused() -> None:
    with pytest.raises(InputError, match=re.escape(
            "my.yaml: override 'retriever.depth.max': 'depth' is not a mapping of options.")):
        apply_overrides(base_config(), {"retriever.depth.max": 5}, source="my.yaml")


def test_a_bare_key_other_than_name_or_description_is_refused() -> None:
    with pytest.raises(InputError) as caught:
        apply_overrides(base_config(), {"depth": 5}, source="my.yaml")
    message = str(caught.value)
    assert message.startswith("my.yaml: override 'depth':")
    assert "'<component>.<option>'" in message and "'retriever.depth'" in message


def test_an_unknown_stage_is_refused_listing_the_stages() -> None:
    with pytest.raises(InputError) as caught:
        apply_overrides(base_config(), {"reasoning.depth": 5}, source="my.yaml")
    assert str(caught.value) == ("my.yaml: override 'reasoning.depth': 'reasoning' names no stage; stages: "
                                 "pointwise, final (or their positions, 0 to 1).")


def test_a_position_past_the_last_stage_is_refused() -> None:
    with pytest.raises(InputError, match=r"'2' names no stage; stages: pointwise, final \(or their positions, 0 to 1\)"):
        apply_overrides(base_config(), {"2.depth": 5})


def test_a_label_naming_two_stages_is_refused_and_positions_still_work() -> None:
    config = {"rerankers": [{"type": "pointwise", "depth": 20}, {"type": "pointwise", "depth": 10}]}
    with pytest.raises(InputError) as caught:
        apply_overrides(config, {"pointwise.depth": 5}, source="twice.yaml")
    message = str(caught.value)
    assert message.startswith("twice.yaml: override 'pointwise.depth': 'pointwise' names more than one stage")
    assert "stages: pointwise, pointwise" in message
    assert [stage["depth"] for stage in apply_overrides(config, {"1.depth": 5})["rerankers"]] == [20, 5]


def test_a_stage_override_without_stages_says_there_are_none() -> None:
    with pytest.raises(InputError, match="stages: none") as caught:
        apply_overrides({"retriever": {"depth": 5}, "rerankers": []}, {"pointwise.depth": 5})
    assert "0 to -1" not in str(caught.value)
