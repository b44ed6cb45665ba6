"""GeM-family pooling against hand-computed values, and the CNN + GeM image encoder: checkpoints,
whitening, identities that rebuild the same encoder, and its use from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrank.encoders import load_encoder_by_name, load_image_encoder
from mmrank.images import open_rgb
from mmrank.encoders.gem import GemEncoder, map_pycls_resnet_keys, parse_gem_identity
from mmrank.encoders.pooling import GeM, GeMPlus, RegionalGeM, ScaleGeM
from mmrank.errors import InputError
from tests.paths import IMAGES

TINY = "gem:resnet18/{pooling};random;size=64"


def test_gem_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # ((1 + 8 + 27 + 64) / 4)^(1/3) = 25^(1/3)
    torch.testing.assert_close(GeM(p=3)(x), torch.tensor([[25 ** (1 / 3)]]))
    torch.testing.assert_close(GeM(p=1)(x), torch.tensor([[2.5]]))
    assert float(GeMPlus()(x)) == pytest.approx(((1 + 2 ** 4.6 + 3 ** 4.6 + 4 ** 4.6) / 4) ** (1 / 4.6), rel=1e-6)
    assert float(GeM(p=60)(x.double())) == pytest.approx(4.0, rel=0.03)  # large p -> max pooling


def test_learned_p_is_a_parameter_that_gets_gradients():
    pool = GeM(p=3.0, learn_p=True)
    pool(torch.rand(2, 4, 3, 3) + 0.1).sum().backward()
    assert isinstance(pool.p, torch.nn.Parameter) and pool.p.grad is not None


def test_regional_gem_matches_an_explicit_window_loop():
    rng = np.random.default_rng(0)
    x = rng.random((1, 2, 6, 7)).astype(np.float32) + 0.05
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    local = np.zeros_like(x)
    for i in range(6):
        for j in range(7):
            window = padded[:, :, i:i + 5, j:j + 5]
            local[:, :, i, j] = (window ** 2.5).mean(axis=(2, 3)) ** (1 / 2.5)
    blended = 0.5 * local + 0.5 * x
    expected = (blended ** 4.6).mean(axis=(2, 3)) ** (1 / 4.6)
    pool = RegionalGeM()
    np.testing.assert_allclose(pool.regional(torch.from_numpy(x)).numpy(), blended, rtol=1e-5)
    np.testing.assert_allclose(pool(torch.from_numpy(x)).numpy(), expected, rtol=1e-5)
    # A map too small to reflect is padded by replication instead of failing.
    assert pool(torch.rand(1, 2, 2, 3)).shape == (1, 2)


def test_scale_gem_max_and_power_mean():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(ScaleGeM()([a, b]), torch.tensor([[1.0, 0.8]]))  # max of (0.6, 0.8), (1, 0)
    # gamma = 0: ((3^2 + 1^2) / 2)^(1/2), ((16 + 0) / 2)^(1/2)
    torch.testing.assert_close(ScaleGeM(p_s=2)([a, b]), torch.tensor([[5 ** 0.5, 8 ** 0.5]]))


@pytest.fixture(scope="module")
def images():
    return [str(IMAGES / name) for name in ("cat.jpg", "rocket.jpg", "coins.jpg")]


@pytest.mark.parametrize("pooling", ["gem", "gem+", "regional-gem", "scale-gem", "superglobal"])
def test_every_pooling_gives_unit_vectors_and_rebuilds_from_its_name(pooling, images):
    encoder = load_image_encoder(TINY.format(pooling=pooling), device="cpu")
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    again = load_encoder_by_name(encoder.name, device="cpu").encode_images(images[:1])
    np.testing.assert_allclose(again[0], vectors[0], rtol=1e-5, atol=1e-6)


def test_identity_parsing_and_errors():
    assert parse_gem_identity("gem:resnet101") == {"backbone": "resnet101", "pooling": "superglobal"}
    assert parse_gem_identity("gem:resnet50/gem+;checkpoint=/m/c.pth;size=512") == {
        "backbone": "resnet50", "pooling": "gem+", "checkpoint": "/m/c.pth", "image_size": 512}
    with pytest.raises(InputError, match="unknown option 'colour=red'"):
        parse_gem_identity("gem:resnet50;colour=red")
    with pytest.raises(InputError, match="Unknown pooling 'avg'"):
        GemEncoder("resnet18", pooling="avg", pretrained=False)
    with pytest.raises(InputError, match="timm has no backbone named 'resnet5O'.*resnet50"):
        GemEncoder("resnet5O", pretrained=False)


def test_imagenet_weights_missing_offline_say_how_to_get_them():
    from mmrank.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="timm backbone 'resnet50'.*internet access.*local checkpoint"):
        load_encoder_by_name("gem:resnet50/gem+")


def _pycls_names(state):
    """timm ResNet names -> pycls names (the inverse of map_pycls_resnet_keys), as CVNet stores them."""
    import re

    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^conv1\.", "stem.conv.", key)
        key = re.sub(r"^bn1\.", "stem.bn.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"s{m[1]}.b{int(m[2]) + 1}.proj.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"s{m[1]}.b{int(m[2]) + 1}.bn.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"s{m[1]}.b{int(m[2]) + 1}.f.{'abc'[int(m[3]) - 1]}.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"s{m[1]}.b{int(m[2]) + 1}.f.{'abc'[int(m[3]) - 1]}_bn.", key)
        renamed[key] = value
    return renamed


def test_cvnet_style_checkpoint_loads_through_the_key_mapping(tmp_path, images):
    import timm
    import torch.nn.functional as F

    torch.manual_seed(1)
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="").eval()
    head = torch.nn.Linear(512, 256)
    state = {f"encoder_q.{k}": v for k, v in _pycls_names(backbone.state_dict()).items()}
    state.update({"encoder_q.head.fc.weight": head.weight.detach(), "encoder_q.head.fc.bias": head.bias.detach(),
                  "cv_learner.conv.weight": torch.zeros(1)})
    assert map_pycls_resnet_keys({k.removeprefix("encoder_q."): v for k, v in state.items()}).keys() >= \
        backbone.state_dict().keys()
    path = tmp_path / "CVNet_R18.pth"
    torch.save({"model_state": state, "epoch": 3}, path)

    encoder = GemEncoder("resnet18", pooling="gem", checkpoint=path, image_size=64, device="cpu")
    assert encoder.dim == 256 and "checkpoint=" in encoder.name
    got = encoder.encode_images(images[:1])[0]
    with torch.inference_mode():
        pixels = encoder.preprocess(open_rgb(images[0]))
        pooled = F.normalize(GeM(p=3.0, eps=1e-8)(backbone.forward_features(pixels)), dim=-1)
        expected = F.normalize(head(pooled), dim=-1)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_unsafe_or_wrong_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    torch.save({"model_state": Exploit()}, evil)
    with pytest.raises(InputError, match="evil.pth: not a readable weights file"):
        GemEncoder("resnet18", checkpoint=evil, device="cpu")
    assert not marker.exists()

    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(InputError, match="partial.pth: not a checkpoint of resnet18: .* weights are missing"):
        GemEncoder("resnet18", checkpoint=partial, device="cpu")
    with pytest.raises(InputError, match="Checkpoint file not found"):
        GemEncoder("resnet18", checkpoint=tmp_path / "none.pth", device="cpu")


def test_whitening_projects_and_checks_its_shape(tmp_path, images):
    rng = np.random.default_rng(0)
    mean, projection = rng.standard_normal(512).astype(np.float32), rng.standard_normal((64, 512)).astype(np.float32)
    np.savez(tmp_path / "w.npz", mean=mean, projection=projection)
    plain = GemEncoder("resnet18", pooling="gem", pretrained=False, image_size=64, device="cpu")
    whitened = GemEncoder("resnet18", pooling="gem", pretrained=False, image_size=64, device="cpu",
                          whitening=tmp_path / "w.npz")
    assert whitened.dim == 64
    expected = projection @ (plain.encode_images(images[:1])[0] - mean)
    np.testing.assert_allclose(whitened.encode_images(images[:1])[0], expected / np.linalg.norm(expected),
                               rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "bad.npz", mean=mean[:10], projection=projection[:, :10])
    with pytest.raises(InputError, match="whitening expects 10-dimensional vectors; this encoder pools 512"):
        GemEncoder("resnet18", pooling="gem", pretrained=False, whitening=tmp_path / "bad.npz", device="cpu")


def test_cli_indexes_and_searches_with_a_gem_encoder(tmp_path, run_cli):
    model = TINY.format(pooling="superglobal")
    code, _, err = run_cli("index", IMAGES, "-o", tmp_path / "c", "--image-model", model, "--quiet")
    assert code == 0, err
    code, out, err = run_cli("search", tmp_path / "c", "--image", IMAGES / "rocket.jpg", "--json",
                             "--pipeline", "landmarks-superglobal", "-k", "3")
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["id"].endswith("rocket.jpg") and hits[0]["stages"]["superglobal"]["rank"] == 1
    code, _, err = run_cli("search", tmp_path / "c", "a rocket")
    assert code == 2 and "nothing in this collection can answer the query" in err
