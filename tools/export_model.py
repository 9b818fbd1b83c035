"""
Export an ATSS LazyConfig model to TorchScript (tracing) or ONNX.

    .venv/bin/python tools/export_model.py --config-file configs/COCO/atss_R_50_FPN_1x.py \
        --format torchscript --output output/export \
        [--sample-image img.jpg | --sample-size 800 1216] [--batch-size 1] [--device cpu] \
        train.init_checkpoint=output/RUN/model_final.pth [other config overrides]

The weights are ``train.init_checkpoint`` as everywhere; they must be a whole trained model of
the config. ``--random-weights`` exports an untrained model. Overrides come last.

The exported model takes (3, H, W) float images (0-255, the config's channel order) and returns
per image (pred_boxes, pred_classes, scores, image_size); see `atss.export`. Beside it,
``model.json`` says so, with the test resize to apply first and the class list (entry i: the
id and name of pred_classes == i; from the run's classes.json or the config's datasets).
``--run RUN`` exports a training run's folder alone: ``--config-file RUN/config.yaml
train.init_checkpoint=RUN/model_final.pth``. The batch size is
fixed at export; H and W are not. To export for a GPU, run with `--device cuda`: the trace then
holds CUDA tensors and must be run on a GPU.
"""

import argparse
import os

import torch

from atss.engine.cli import (
    add_config_arguments,
    add_weights_arguments,
    config_and_overrides,
    exit_on_usage_errors,
    parse_args,
)
from atss.engine.config import RANDOM, TRAINED, build_model, load_config
from atss.engine.predictor import model_classes
from atss.export import (
    OUTPUT_NAMES,
    export_info,
    export_onnx,
    export_torchscript,
    onnx_input_names,
    resize_of_test_loader,
    write_export_info,
)


def get_parser():
    parser = argparse.ArgumentParser(
        description="Export an ATSS model by tracing.",
        epilog="e.g. --config-file configs/Shapes/atss_tiny_shapes.py --output out/export "
        "train.init_checkpoint=out/run/model_final.pth",
    )
    add_config_arguments(parser)
    add_weights_arguments(parser)
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--sample-image", nargs="*", default=[], help="image file(s) to trace")
    parser.add_argument("--sample-size", type=int, nargs=2, default=[800, 1216], metavar="H W")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call (frozen)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--opset", type=int, default=16)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser


def load_model_and_config(config_file, opts, device, random_weights=False):
    """The config's model on ``device`` in eval mode with the weights of
    ``train.init_checkpoint`` (random ones with ``random_weights``), and the config; raises
    ConfigError / WeightsError with the fix."""
    cfg = load_config(config_file, opts)
    return build_model(cfg, RANDOM if random_weights else TRAINED, device, what="export"), cfg


def info_of(cfg, config_file, model, path, output_names, batch_size):
    """What model.json says of the export at ``path`` (:func:`atss.export.export_info`)."""
    try:
        resize = resize_of_test_loader(cfg)
    except ValueError as e:
        print(f"warning: model.json gives no test resize: {e}")
        resize = None
    return export_info(
        path,
        model.input_format or "BGR",
        resize,
        model_classes(cfg, config_file),
        model.num_classes,
        output_names,
        onnx_input_names(batch_size),
    )


def sample_images(args, input_format):
    if not args.sample_image:
        g = torch.Generator().manual_seed(0)
        h, w = args.sample_size
        return [torch.rand(3, h, w, generator=g) * 255 for _ in range(args.batch_size)]
    from detectron2.data.detection_utils import read_image

    images = []
    for path in args.sample_image:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sample-image: no such file: {path}")
        img = read_image(path, format=input_format)
        images.append(torch.as_tensor(img.astype("float32").transpose(2, 0, 1)))
    if len(images) != args.batch_size:
        raise ValueError(f"{len(images)} sample images for --batch-size {args.batch_size}")
    return images


def main(argv=None):
    args = parse_args(get_parser(), argv)
    with exit_on_usage_errors("export_model.py"):
        args.config_file, opts = config_and_overrides(args)
        model, cfg = load_model_and_config(args.config_file, opts, args.device, args.random_weights)
    images = [x.to(args.device) for x in sample_images(args, model.input_format or "BGR")]
    ext = "ts" if args.format == "torchscript" else "onnx"
    path = os.path.join(args.output, f"model.{ext}")
    if args.format == "torchscript":
        export_torchscript(model, images, path)
        names = [f"{name}{i}" for i in range(args.batch_size) for name in OUTPUT_NAMES]
        how = (
            "import torch, torchvision  # torchvision registers the NMS op\n"
            f"model = torch.jit.load({path!r})\n"
            f"outputs = model(*images)  # {args.batch_size} x (3, H, W) float, 0-255, "
            f"{model.input_format}\n"
        )
    else:
        names = export_onnx(model, images, path, opset=args.opset)
        how = (
            "import onnxruntime\n"
            f"sess = onnxruntime.InferenceSession({path!r})\n"
            "outputs = sess.run(None, {'image0': image})  # (3, H, W) float32 numpy\n"
            f"# outputs: {names}\n"
        )
    info = write_export_info(
        args.output, info_of(cfg, args.config_file, model, path, names, args.batch_size)
    )
    print(f"wrote {path} and {info} (classes, channel order, pixel range, test resize)")
    print(f"outputs per image: {OUTPUT_NAMES}")
    print("run it with:\n" + how)
    return path


if __name__ == "__main__":
    main()
