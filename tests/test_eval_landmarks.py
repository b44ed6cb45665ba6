"""`mmrank eval` on a Revisited-Oxford-layout folder with a GeM encoder and the SuperGlobal
pipeline: every protocol scored after every stage; and the ground-truth conversion command."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from PIL import Image
from tests.paths import IMAGES

DATABASE = ["astronaut", "cat", "coffee", "coins", "rocket", "dahlia"]


def _write_oxford(root: Path) -> Path:
    folder = root / "roxford5k"
    (folder / "jpg").mkdir(parents=True)
    for name in DATABASE:
        shutil.copy(IMAGES / f"{name}.jpg", folder / "jpg" / f"{name}.jpg")
    full = [0.0, 0.0, *Image.open(IMAGES / "cat.jpg").size]
    rocket = [0.0, 0.0, *Image.open(IMAGES / "rocket.jpg").size]
    # The queries are uncropped copies of database images, so each finds its copy first.
    gnd = {"imlist": DATABASE, "qimlist": ["cat", "rocket"],
           "gnd": [{"bbx": full, "easy": [], "hard": [1], "junk": [2]},
                   {"bbx": rocket, "easy": [4], "hard": [], "junk": []}]}
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    return root


def test_eval_reports_every_protocol_after_every_stage(tmp_path, run_cli):
    root = _write_oxford(tmp_path / "data")
    code, out, err = run_cli("eval", root, "--format", "roxford5k", "--pipeline", "landmarks-superglobal",
                             "--image-model", "gem:resnet18/superglobal;random;size=64", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["dataset"], result["queries"]) == ("roxford5k", 2)
    stages = {stage["stage"]: stage["metrics"] for stage in result["stages"]}
    assert set(stages) == {"retrieve", "superglobal"}
    for metrics in stages.values():
        assert metrics["medium/rmap"] == metrics["easy/rmap"] == metrics["hard/rmap"] == 1.0
        assert metrics["medium/mp@1"] == 1.0
        assert (metrics["easy/queries"], metrics["medium/queries"], metrics["hard/queries"]) == (1, 2, 1)

    code, out, err = run_cli("eval", root, "--format", "roxford5k", "--pipeline", "landmarks-superglobal",
                             "--image-model", "gem:resnet18/gem;random;size=64", "--metrics", "rmap",
                             "--save-runs", tmp_path / "runs")
    assert code == 0, err
    header = out.splitlines()[1]
    assert header.split() == ["stage", "easy/rmap", "medium/rmap", "hard/rmap", "ms/query"]
    assert out.splitlines()[-1] == "Queries counted in the means: easy 1, medium 2, hard 1"
    # One qrels file and one run per stage for each protocol; junk (and, for easy, hard) images are
    # not in the runs, as they were not scored.
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == sorted(["results.json", *(f"{protocol}.{name}" for protocol in ("easy", "medium", "hard")
                                              for name in ("qrels.txt", "retrieve.run", "superglobal.run"))])
    assert (tmp_path / "runs" / "hard.qrels.txt").read_text() == f"cat 0 {DATABASE[1]} 1\n"


def test_convert_revisited_writes_json_the_loader_prefers(tmp_path, run_cli):
    root = _write_oxford(tmp_path / "data")
    pkl = root / "roxford5k" / "gnd_roxford5k.pkl"
    code, out, err = run_cli("convert-revisited", pkl)
    assert code == 0, err
    written = pkl.with_suffix(".json")
    assert json.loads(written.read_text())["qimlist"] == ["cat", "rocket"]
    pkl.unlink()
    code, out, err = run_cli("eval", root, "--format", "roxford5k", "--pipeline", "landmarks-superglobal",
                             "--image-model", "gem:resnet18/gem;random;size=64", "-O", "protocol=hard", "--json")
    assert code == 0, err


def test_bad_option_syntax_is_a_clear_error(tmp_path, run_cli):
    code, _, err = run_cli("eval", tmp_path, "--format", "roxford5k", "-O", "protocol")
    assert code == 2 and "--option expects KEY=VALUE, got 'protocol'" in err
