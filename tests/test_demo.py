"""demo.py on generated images and a short video, with a tiny random model and its checkpoint."""

import logging
import re

import cv2
import numpy as np
import pytest
import torch

from demo import expand_inputs, main
from tests.atss_testing import read_detections_csv, tiny_model, write_tiny_config

# The tiny test model at a small test resolution (64 px). Its head is 64 channels wide: GN(32) on
# 32 channels (1 per group) fails on the 1x1 P7 of a small image.
HEAD_DIMS = [64, 64]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model = tiny_model(num_classes=3, **{"head.conv_dims": HEAD_DIMS})
    with torch.no_grad():  # every class probable everywhere, so that boxes get drawn
        model.head.cls_score.bias.fill_(2.0)
    weights = root / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = write_tiny_config(
        root / "tiny_config.py",
        64,
        96,
        f"model.head.conv_dims = {HEAD_DIMS}",
        "model.max_detections_per_image = 5",
    )
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(90, 120), (100, 80)]):
        path = root / f"img{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append(path)
    broken = root / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for _ in range(3):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return {
        "root": root,
        "weights": weights,
        "config": config,
        "images": images,
        "broken": broken,
        "video": video,
    }


def test_demo_writes_annotated_pngs_and_names_unreadable_files(setup, tmp_path, caplog):
    """Two images and a video are annotated; the broken file is named; exit status 1."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    inputs = [str(p) for p in setup["images"]] + [str(setup["broken"])]
    status = main(
        [
            "--config-file",
            str(setup["config"]),
            "--input",
            *inputs,
            "--output",
            str(out),
            "--confidence-threshold",
            "0.3",
            "--video-input",
            str(setup["video"]),
            f"train.init_checkpoint={setup['weights']}",
        ]
    )
    assert status == 1
    assert "broken.png: cannot read image" in caplog.text
    for path in setup["images"]:
        written = cv2.imread(str(out / (path.stem + ".png")))
        original = cv2.imread(str(path))
        assert written is not None and written.shape == original.shape
        assert np.abs(written.astype(int) - original.astype(int)).max() > 50  # boxes drawn
    # The model keeps 5 detections per image (model.max_detections_per_image), all scored
    # above 0.3 (sigmoid(2) = 0.88 for every class): exactly 5 drawn in each image, not "5" as
    # part of "15" or "50".
    counts = re.findall(r"img(\d)\.jpg: (\d+) detections ->", caplog.text)
    assert sorted(counts) == [("0", "5"), ("1", "5")]
    frames = cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)
    assert frames == 3
    assert not (out / "broken.png").exists()


def test_demo_reports_bad_weights_and_missing_inputs(setup, tmp_path, caplog):
    missing = tmp_path / "no_such_weights.pth"
    status = main(
        [
            "--config-file",
            str(setup["config"]),
            "--input",
            str(setup["images"][0]),
            "--output",
            str(tmp_path),
            f"train.init_checkpoint={missing}",
        ]
    )
    assert status == 2 and "no_such_weights.pth" in caplog.text
    files, errors = expand_inputs([str(tmp_path / "*.jpeg"), str(setup["root"])])
    assert errors == [f"{tmp_path / '*.jpeg'}: no file matches this pattern"]
    assert [p.split("/")[-1] for p in files] == ["broken.png", "img0.jpg", "img1.jpg"]


def test_demo_writes_detections_instead_of_drawing_a_large_image(setup, tmp_path):
    """Tiled, an image over ``--max-draw-pixels`` is not drawn: its detections go to
    ``<name>.csv`` / ``.json`` (class ids of the run's classes.json), and
    ``--output-detections`` gets those of every image. The same picture as a ``.npy`` (RGB,
    read a tile at a time) and as a ``.png`` gives the same rows. Fails if a large image is
    still drawn, the channel order of the lazily read ``.npy`` is wrong, or the user's class
    ids are replaced by the model's indices."""
    import json
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    config = shutil.copy(setup["config"], run / "config.py")
    classes = [{"id": 11, "name": "a"}, {"id": 12, "name": "b"}, {"id": 14, "name": "c"}]
    (run / "classes.json").write_text(json.dumps({"classes": classes}))
    rgb = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    np.save(tmp_path / "big.npy", rgb)
    cv2.imwrite(str(tmp_path / "same.png"), rgb[:, :, ::-1])
    out = tmp_path / "out"
    argv = ["--config-file", str(config)]
    argv += ["--input", str(tmp_path / "big.npy"), str(tmp_path / "same.png")]
    argv += ["--output", str(out), "--tile-size", "96", "--tile-overlap", "32"]
    argv += ["--max-draw-pixels", str(149 * 200), "--confidence-threshold", "0.2"]
    argv += ["--output-detections", str(tmp_path / "all.csv"), str(tmp_path / "all.json")]
    argv += [f"train.init_checkpoint={setup['weights']}"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["big.csv", "big.json", "same.csv", "same.json"]
    big, same = read_detections_csv(str(out / "big.csv")), read_detections_csv(
        str(out / "same.csv")
    )
    assert len(big) > 0
    assert [{**r, "image": ""} for r in big] == [{**r, "image": ""} for r in same]
    assert {r["class_id"] for r in big} <= {11, 12, 14}
    assert {(r["class_id"], r["class_name"]) for r in big} <= {(11, "a"), (12, "b"), (14, "c")}
    everything = read_detections_csv(str(tmp_path / "all.csv"))
    assert everything == big + same
    assert len(json.loads((tmp_path / "all.json").read_text())) == len(everything)


def test_tiled_demo_reads_pictures_over_pils_pixel_limit(setup, tmp_path, monkeypatch):
    """PIL refuses pictures over ``Image.MAX_IMAGE_PIXELS`` (179 M pixels: a 16384² picture)
    as decompression bombs; the tiled demo reads pictures with OpenCV (no such limit: tiling
    is asked for large pictures), the untiled one keeps PIL and its limit, which nothing
    changes. Shown with the limit lowered below the test image's size. Fails if tiling still
    refuses the picture or the limit is changed."""
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # the images have 10,800 / 8,000
    base = ["--config-file", str(setup["config"]), "--input", str(setup["images"][0])]
    weights = [f"train.init_checkpoint={setup['weights']}"]
    assert main(base + ["--output", str(tmp_path / "untiled")] + weights) == 1  # > 2x limit
    tiled = ["--output", str(tmp_path / "tiled"), "--tile-size", "48", "--tile-overlap", "16"]
    assert main(base + tiled + weights) == 0
    assert [p.name for p in (tmp_path / "tiled").iterdir()] == ["img0.png"]
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000
