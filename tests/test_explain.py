"""`vitgender explain`: maps with the right shape and mass, a patch the model provably ignores gets none,
the deletion metric ranks a faithful map above random, and the CLI writes a complete folder or nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HOSTILE_LABEL, random_image, run_main
from vitgender.errors import ExitCode
from vitgender.explain.deletion import curve_auc, deletion_curves, patch_order, remove_patches
from vitgender.explain.maps import METHODS, attribution_result, average_maps, explain_pixels, rollout, rollout_result

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))
IGNORED = 5  # row-major patch index (row 1, column 1 of the 4x4 grid) that `ignoring_vit` never reads


@pytest.fixture(scope="module")
def explainer(tiny_model):
    from vitgender.explain import Explainer

    return Explainer(tiny_model)


@pytest.fixture(scope="module")
def pixels(explainer) -> np.ndarray:
    return explainer.pixels([random_image(seed, size=(40, 36)) for seed in range(3)])


@pytest.mark.parametrize("method", METHODS)
def test_maps_cover_the_patch_grid_and_sum_to_one(explainer, pixels, method):
    result = explain_pixels(explainer.model, pixels, method)
    assert result.maps.shape == (3, 4, 4) and result.maps.dtype == np.float32  # 32 px input, patch 8
    assert np.all(result.maps >= 0) and np.allclose(result.maps.sum((1, 2)), 1.0, atol=1e-6)
    assert result.logits.shape == (3, 2) and np.array_equal(result.target, result.logits.argmax(1))
    assert len({m.tobytes() for m in result.maps}) == 3  # different images, different maps: not a constant


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_deterministic_and_batch_independent(explainer, pixels, method):
    first = explain_pixels(explainer.model, pixels, method).maps
    assert np.array_equal(first, explain_pixels(explainer.model, pixels, method).maps)
    alone = explain_pixels(explainer.model, pixels[1:2], method).maps
    np.testing.assert_allclose(alone[0], first[1], atol=1e-6)


def test_explainer_api_agrees_with_the_classifier(explainer, tiny_model, image_dir):
    from vitgender.classify import load_classifier
    from vitgender.errors import ImageError, UsageError

    path = image_dir / "img0.jpg"
    results = explainer.explain([path, random_image(5)], method="rollout")
    assert [r.image for r in results] == [str(path), "<image 1>"]
    assert all(r.map.shape == (4, 4) and r.method == "rollout" and r.box is None for r in results)
    expected = load_classifier(tiny_model).classify([path])[0][0]  # same preprocessing, same answer
    assert results[0].label == expected["label"] and results[0].score == pytest.approx(expected["score"], abs=1e-5)
    assert results[0].predictions[0]["label"] == results[0].label
    with pytest.raises(ImageError):
        explainer.explain([b"not an image"])
    with pytest.raises(UsageError):
        explainer.explain([path], method="gradcam")


def test_attribution_depends_on_the_explained_class_and_rollout_does_not(explainer, pixels):
    model = explainer.model
    assert not np.allclose(
        attribution_result(model, pixels, target=[0, 0, 0]).maps,
        attribution_result(model, pixels, target=[1, 1, 1]).maps,
    )
    assert np.array_equal(
        rollout_result(model, pixels, target=[0, 0, 0]).maps, rollout_result(model, pixels, target=[1, 1, 1]).maps
    )


def test_attention_gradients_reach_the_returned_tensors(explainer, pixels):
    """HF returns eager attention probabilities that are the forward pass's own tensors: gradients flow."""
    import torch

    model = explainer.model
    model.config._attn_implementation = "eager"
    out = model(pixel_values=torch.from_numpy(pixels).requires_grad_(True), output_attentions=True)
    grads = torch.autograd.grad(out.logits[:, 0].sum(), out.attentions)
    assert all(g.shape == a.shape and g.abs().sum() > 0 for g, a in zip(grads, out.attentions, strict=False))


def test_rollout_options_and_model_state_are_restored(explainer, pixels):
    model = explainer.model
    before = model.config._attn_implementation
    model.train()
    for fusion in ("mean", "max", "min"):
        maps = rollout(model, pixels, head_fusion=fusion, discard_ratio=0.5)
        assert maps.shape == (3, 4, 4) and np.allclose(maps.sum((1, 2)), 1.0, atol=1e-6)
    assert model.training and model.config._attn_implementation == before
    model.eval()
    with pytest.raises(ValueError):
        rollout(model, pixels, head_fusion="median")
    with pytest.raises(ValueError):
        rollout(model, pixels, discard_ratio=1.0)


def ignoring_vit():
    """A 2-layer ViT whose logits provably do not depend on patch IGNORED.

    Construction (hidden size 32, flag dimension F = 31, M = 100, B = 100):
    - the patch embedding writes nothing into F (its weights and bias there are 0), the position
      embeddings put -M into F for every token except IGNORED's, which gets +M, and no attention
      or MLP output writes into F (those rows are 0), so F stays exactly -M / +M in every layer;
    - every head's query is a constant (query weights 0, bias e_0) and its key reads only F
      (key weight -B at (e_0, F), nothing else), so the score of key j is -B/4 * LN(h_j)[F]:
      about -139 for IGNORED (LN of a vector dominated by +M is about +sqrt(31)) and about +139
      for every other token. exp(-278) underflows float32 to exactly 0, so no token ever attends
      to IGNORED, the CLS token is built from the other tokens only, and the logits are
      bit-for-bit independent of IGNORED's pixels. The test checks each link.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        layer_norm_eps=1e-6,
    )
    model = ViTForImageClassification(config).eval()
    flag, big, key_gain, head_dim = 31, 100.0, 100.0, 16
    with torch.no_grad():
        embeddings = model.vit.embeddings
        projection = embeddings.patch_embeddings.projection
        projection.weight.mul_(20)  # content large enough to matter next to the flag after LayerNorm
        projection.weight[flag] = 0
        projection.bias[flag] = 0
        embeddings.cls_token[0, 0, flag] = 0
        embeddings.position_embeddings[0, :, flag] = -big
        embeddings.position_embeddings[0, 1 + IGNORED, flag] = big
        for layer in model.vit.encoder.layer:
            for norm in (layer.layernorm_before, layer.layernorm_after):
                norm.weight.fill_(1.0)
                norm.bias.zero_()
            attention = layer.attention.attention
            attention.query.weight.zero_()
            attention.query.bias.zero_()
            attention.key.weight.zero_()
            attention.key.bias.zero_()
            for head in range(config.num_attention_heads):
                attention.query.bias[head * head_dim] = 1.0
                attention.key.weight[head * head_dim, flag] = -key_gain
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight[flag] = 0
                dense.bias[flag] = 0
        model.classifier.weight.mul_(20)
    return model


def test_a_patch_the_model_provably_ignores_gets_no_mass():
    import torch

    model = ignoring_vit()
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels), output_attentions=True)
    for attention in out.attentions:  # no token attends to the ignored one (its own row aside)
        others = [t for t in range(17) if t != 1 + IGNORED]
        assert torch.all(attention[:, :, others, 1 + IGNORED] == 0)
    row, col = divmod(IGNORED, 4)
    perturbed = pixels.copy()
    perturbed[:, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = rng.uniform(-1, 1, size=(2, 3, 8, 8))
    elsewhere = pixels.copy()
    elsewhere[:, :, 24:, 24:] = rng.uniform(-1, 1, size=(2, 3, 8, 8))
    with torch.no_grad():
        logits = [model(pixel_values=torch.from_numpy(p)).logits for p in (pixels, perturbed, elsewhere)]
    assert torch.equal(logits[0], logits[1])  # the ignored patch changes nothing, bit for bit
    assert not torch.equal(logits[0], logits[2])  # while another patch does: the model is not constant
    for method in METHODS:
        maps = explain_pixels(model, pixels, method).maps
        assert maps[:, row, col].max() < 1e-6, method
        assert np.allclose(maps.sum((1, 2)), 1.0, atol=1e-6) and (maps > 1e-3).sum() >= 2 * 15, method


def test_average_maps_renormalises_and_refuses_empty():
    a, b = np.zeros((2, 2)), np.zeros((2, 2))
    a[0, 0], b[1, 1] = 1.0, 1.0
    np.testing.assert_allclose(average_maps([a, b]), [[0.5, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(average_maps([a]), a)
    with pytest.raises(ValueError):
        average_maps([])
    with pytest.raises(ValueError):
        average_maps([np.zeros((2, 2))])


def test_remove_patches_replaces_exactly_the_chosen_patches_with_the_image_mean():
    pixels = np.random.default_rng(1).normal(size=(3, 16, 16)).astype(np.float32)
    out = remove_patches(pixels, np.array([3]), (2, 2), 8)  # patch 3 = row 1, column 1
    mean = pixels.reshape(3, -1).mean(1)
    np.testing.assert_allclose(out[:, 8:, 8:], np.broadcast_to(mean[:, None, None], (3, 8, 8)), rtol=1e-6)
    assert np.array_equal(out[:, :8, :], pixels[:, :8, :]) and np.array_equal(out[:, 8:, :8], pixels[:, 8:, :8])


def test_patch_orders():
    maps = np.array([[[0.1, 0.4], [0.2, 0.3]]])
    assert patch_order(maps, "salient").tolist() == [[1, 3, 2, 0]]
    assert patch_order(maps, "least").tolist() == [[0, 2, 3, 1]]
    shuffled = patch_order(maps, "random", np.random.default_rng(0))
    assert sorted(shuffled[0].tolist()) == [0, 1, 2, 3]
    assert np.array_equal(shuffled, patch_order(maps, "random", np.random.default_rng(0)))
    with pytest.raises(ValueError):
        patch_order(maps, "random")


def test_deletion_ranks_a_faithful_map_above_random_and_a_misleading_one_below():
    """A fake model whose confidence is the brightness of patch 0 of a 4x4 grid."""

    def predict(batch: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-8 * (batch[:, :, :8, :8].mean((1, 2, 3)) - 0.5)))
        return np.stack([1 - p, p], 1)

    pixels = np.zeros((1, 3, 32, 32), np.float32)
    pixels[:, :, :8, :8] = 1.0
    target = np.array([1])
    faithful = np.full((1, 4, 4), 0.01)
    faithful[0, 0, 0] = 0.85
    curves = {
        name: deletion_curves(predict, pixels, patch_order(faithful, name, np.random.default_rng(0)), target, 8)
        for name in ("salient", "least")
    }
    randoms = [
        deletion_curves(predict, pixels, patch_order(faithful, "random", np.random.default_rng(s)), target, 8)
        for s in range(20)
    ]
    salient, least = curve_auc(curves["salient"])[0], curve_auc(curves["least"])[0]
    random = curve_auc(np.mean(randoms, 0))[0]
    assert curves["salient"][0, 0] == pytest.approx(predict(pixels)[0, 1])
    assert salient < random < least
    assert curve_auc(np.full((1, 10), 0.7))[0] == pytest.approx(0.7)


def test_crop_region_is_the_square_faces_crop_cuts():
    from vitgender.explain.api import crop_region
    from vitgender.faces import Face, crop

    image = random_image(3, size=(120, 90))
    for box in [(10, 20, 30, 40), (80, 5, 35, 20), (0, 0, 12, 12)]:
        x, y, w, h = crop_region(box)
        assert np.array_equal(np.asarray(image.crop((x, y, x + w, y + h))), np.asarray(crop(image, Face(box, 1.0))))


class FixedDetector:
    """A stand-in detector with known boxes: where each map lands is then checkable."""

    name = "fixed"

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        from vitgender.faces import Face

        return [Face(box, 0.9) for box in self.boxes]


def test_face_maps_land_inside_their_crop_on_the_original_photo(explainer):
    from vitgender.reporting.explanations import overlay

    photo = Image.new("RGB", (200, 100), (128, 128, 128))
    photo.paste(random_image(1, size=(40, 40)), (20, 30))
    photo.paste(random_image(2, size=(40, 40)), (140, 30))
    explanations = explainer.explain_faces(photo, FixedDetector([(20, 30, 40, 40), (140, 30, 40, 40)]))
    assert [e.box for e in explanations] == [(20, 30, 40, 40), (140, 30, 40, 40)]
    assert explanations[0].region == (16, 26, 48, 48) and all(e.map.shape == (4, 4) for e in explanations)
    drawn = np.asarray(overlay(photo, explanations, "caption", max_side=1000), dtype=np.int16)
    untouched = np.asarray(photo, dtype=np.int16)
    changed = np.abs(drawn[:100] - untouched).sum(-1) > 0
    inside = np.zeros_like(changed)
    for x, y, w, h in (e.region for e in explanations):
        inside[y : y + h, x : x + w] = True
    assert changed[inside].mean() > 0.9 and not changed[~inside].any()
    assert drawn.shape[0] > 100  # the caption strip below the photo
    assert explainer.explain_faces(photo, FixedDetector([])) == []


def test_cli_writes_an_overlay_per_image_and_a_self_contained_sheet(
    tiny_model, image_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "explained"
    code, stdout, stderr = run_main(
        monkeypatch,
        capsys,
        "explain",
        str(image_dir),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--batch-size",
        "4",
    )
    assert code == ExitCode.OK and stderr == "", stderr
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6 and all(Image.open(p).size[0] > 0 for p in pngs)
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == 6 and page.count("data:image/jpeg;base64,") == 6
    assert re.search(r"(female|male) \d\.\d\d", page) and "img0.jpg" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing fetched from elsewhere
    assert "6 overlays" in stdout
    assert not list(tmp_path.glob(".explained*"))  # no partial or old folder left behind


def test_cli_bad_file_is_listed_as_an_error_and_exits_2(tiny_model, image_dir, tmp_path, monkeypatch, capsys):
    (image_dir / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "explained"
    code, _, stderr = run_main(
        monkeypatch,
        capsys,
        "explain",
        str(image_dir),
        str(tmp_path / "missing.png"),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--method",
        "rollout",
    )
    assert code == ExitCode.USAGE
    assert "broken.jpg: not an image" in stderr and "missing.png: no such file" in stderr and "Traceback" not in stderr
    page = (out / "index.html").read_text()
    assert page.count('class="card error"') == 2 and "broken.jpg" in page and "rollout" in page
    assert len(list(out.glob("*.png"))) == 6


def test_cli_refuses_a_non_empty_folder_unless_overwrite(tiny_model, image_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "explained"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["explain", str(image_dir / "img0.jpg"), "--model", str(tiny_model), "--out", str(out)]
    code, _, stderr = run_main(monkeypatch, capsys, *args)
    assert code == ExitCode.USAGE and "not empty" in stderr and (out / "keep.txt").is_file()
    code, _, stderr = run_main(monkeypatch, capsys, *args, "--overwrite")  # not an earlier explain output
    assert code == ExitCode.USAGE and (out / "keep.txt").is_file()
    (out / "keep.txt").unlink()
    assert run_main(monkeypatch, capsys, *args)[0] == ExitCode.OK
    assert (
        run_main(
            monkeypatch,
            capsys,
            "explain",
            str(image_dir / "img1.jpg"),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--overwrite",
        )[0]
        == ExitCode.OK
    )
    assert [p.name for p in out.glob("*.png")] == ["0001-img1.jpg.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained", "images"]  # no partial or old folder


def test_cli_failure_midway_leaves_no_folder(tiny_model, image_dir, tmp_path, monkeypatch, capsys):
    from vitgender.reporting import explanations as render

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(render, "png_bytes", explode)
    code, _, stderr = run_main(
        monkeypatch, capsys, "explain", str(image_dir), "--model", str(tiny_model), "--out", str(tmp_path / "explained")
    )
    assert code == ExitCode.USAGE and "explained: cannot write (disk full)" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [image_dir]


def test_sheet_escapes_labels_and_file_names(hostile_model, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    random_image(0).save(images / '"><img src=x onerror=alert(1)>.jpg')
    out = tmp_path / "explained"
    code, _, stderr = run_main(
        monkeypatch, capsys, "explain", str(images), "--model", str(hostile_model), "--out", str(out)
    )
    assert code == ExitCode.OK, stderr
    page = (out / "index.html").read_text()
    assert "<img src=x" not in page and "<script>x" not in page and HOSTILE_LABEL not in page
    assert "&lt;img src=x onerror=" in page  # the label and the name, shown as text


def test_sheet_puts_wrong_and_uncertain_answers_first(tiny_model, tmp_path, monkeypatch, capsys):
    """Two copies of one image, named as UTKFace's male and female: exactly one answer contradicts its name."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("00_first.png", "30_0_0_20170117131018041.jpg.chip.jpg", "30_1_0_20170117131018041.jpg.chip.jpg"):
        random_image(4).save(images / name, format="PNG")
    out = tmp_path / "explained"
    args = ["explain", str(images), "--model", str(tiny_model), "--out", str(out)]
    assert run_main(monkeypatch, capsys, *args)[0] == ExitCode.OK
    page = (out / "index.html").read_text()
    assert page.count("wrong (expected") == 1 and "uncertain" not in page
    cards = re.findall(r'<div class="card"[^>]*>.*?<div class="name">([^<]*)</div>', page)
    assert cards[0].endswith("00_first.png")  # without --min-confidence: input order
    code, _, _ = run_main(monkeypatch, capsys, *args, "--overwrite", "--min-confidence", "1.0")
    page = (out / "index.html").read_text()
    assert code == ExitCode.OK and page.count('<span class="flag">uncertain</span>') == 3
    code, _, _ = run_main(monkeypatch, capsys, *args, "--overwrite", "--min-confidence", "0.0")
    page = (out / "index.html").read_text()
    cards = re.findall(r'<div class="card"[^>]*>.*?<div class="name">([^<]*)</div>', page)
    assert "wrong (expected" in page.split('<div class="card"')[1]  # the wrong answer comes first,
    assert cards[1].endswith("00_first.png")  # then the rest in input order


@pytest.mark.skipif(not EXAMPLES, reason="examples/ holds the face photos")
def test_cli_faces_maps_each_face_back_onto_the_photo(tmp_path, monkeypatch, capsys, tiny_model):
    pytest.importorskip("cv2", reason="the haar detector needs OpenCV: pip install .[faces]")
    scene = Image.new("RGB", (600, 300), (200, 200, 200))
    scene.paste(Image.open(EXAMPLES[0]).convert("RGB"), (40, 50))
    scene.save(tmp_path / "scene.png")
    out = tmp_path / "explained"
    code, _, stderr = run_main(
        monkeypatch,
        capsys,
        "explain",
        str(tmp_path / "scene.png"),
        "--faces",
        "--model",
        str(tiny_model),
        "--out",
        str(out),
    )
    assert code == ExitCode.OK, stderr
    page = (out / "index.html").read_text()
    assert "face 1:" in page
    assert Image.open(next(out.glob("*.png"))).size[0] == 600
