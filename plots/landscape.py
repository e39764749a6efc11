r"""Loss-landscape figure: the loss around one test image on the (gradient sign, random) slice, per checkpoint.

    python -m plots.landscape --checkpoints runs/fm-kwta/checkpoint.pt runs/fm-relu/checkpoint.pt \
        --out results/landscape.png [--steps 25 --radius 0.1 --image-index 0 1 2 --data-dir D]

One 3-D surface per checkpoint side by side (as the paper's figure: k-WTA, k-WTA + adversarial training,
ReLU, ReLU + adversarial training), titled with the activation and ratio, on a shared colour scale,
with the same slices as contour plots below. The slice is kwta.landscape.loss_landscape's: x along the
sign of the input gradient of the cross-entropy, y along a seeded Rademacher direction, both over
[-radius, radius] in L-inf input units (default radius: the dataset's eps, as attack.py), images clamped
to [0, 1] unless --no-clamp. The figure shows the first --image-index; the roughness (kwta.landscape.
roughness: mean |second difference| / loss range) is measured on every index and printed.

Writes OUT (PNG), and beside it .pdf, .npz (coords, loss grids, roughness, clean losses per checkpoint and
image) and .json (the roughness table with each checkpoint's spec).
"""

import argparse
import sys

from experiments.cli import HelpFormatter, positive_float


def odd_steps(text: str) -> int:
    value = int(text)
    if value < 3 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 3 (the grid's centre is the image), got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="PT", help="checkpoints to compare")
    parser.add_argument("--labels", nargs="+", help="one title per checkpoint (default: activation and ratio)")
    parser.add_argument("--out", required=True, help="PNG to write (.pdf, .npz and .json go beside it)")
    parser.add_argument("--steps", type=odd_steps, default=25, help="grid points per axis, odd")
    parser.add_argument("--radius", type=positive_float, help="half-width in L-inf input units (default: the "
                        "checkpoint's dataset's eps, kwta.data.DEFAULT_EPS, as attack.py)")
    parser.add_argument("--image-index", type=int, nargs="+", default=[0], metavar="I",
                        help="test images to slice around; the figure shows the first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random direction")
    parser.add_argument("--no-clamp", action="store_true", help="do not clip grid points to [0, 1]")
    parser.add_argument("--batch-size", type=int, default=125, help="grid points per forward pass")
    parser.add_argument("--data-dir", help="where the dataset lives (as train.py; fashion-mnist: Debian's files)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        parser.error(f"--labels gives {len(args.labels)} titles for {len(args.checkpoints)} checkpoints")
    if any(index < 0 for index in args.image_index):
        parser.error(f"--image-index must be >= 0, got {args.image_index}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not args.out.endswith(".png"):
        parser.error(f"--out must name a .png file, got {args.out}")
    return args


def fail(message: object) -> None:
    sys.exit(f"landscape.py: error: {message}")


def describe(spec: dict, adv_train: bool) -> str:
    kind = "ReLU"
    if spec["activation"] == "kwta":
        kind = f"k-WTA {spec['ratio']:g}" + (f" ({spec['mode']})" if spec["mode"] != "vol" else "")
    return kind + (" + adv. training" if adv_train else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Only now the heavy imports: --help and a bad argument answer at once.
    import matplotlib

    matplotlib.use("Agg")  # figures are written to files; no display needed
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.ticker import MaxNLocator

    from experiments.figures import save_figure
    from kwta.checkpoint import image_size, load_model
    from kwta.data import DEFAULT_EPS, get_datasets
    from kwta.landscape import loss_landscape, roughness

    # Setup: every model, and the test images each one is sliced around (datasets loaded once per kind).
    try:
        auto_device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto_device if args.device == "auto" else args.device)
    except RuntimeError as error:
        fail(f"--device: {error}")
    try:
        runs, test_sets = [], {}
        for index, path in enumerate(args.checkpoints):
            model, checkpoint = load_model(path, device)
            spec = checkpoint["spec"]
            key = (spec["dataset"], image_size(spec))
            if key not in test_sets:
                test_sets[key] = get_datasets(spec["dataset"], args.data_dir, input_size=image_size(spec),
                                              augment=False)[1]
            if max(args.image_index) >= len(test_sets[key]):
                fail(f"--image-index {max(args.image_index)}: the {spec['dataset']} test set has "
                     f"{len(test_sets[key])} images")
            adv_train = bool(checkpoint.get("args", {}).get("adv_train", False))
            label = args.labels[index] if args.labels else describe(spec, adv_train)
            radius = args.radius if args.radius is not None else DEFAULT_EPS[spec["dataset"]]
            runs.append(dict(path=path, model=model, spec=spec, adv_train=adv_train, label=label, radius=radius,
                             test_set=test_sets[key]))
    except (ValueError, OSError, RuntimeError) as error:  # a bad checkpoint, a missing dataset, CUDA absent
        fail(error)

    # The slices: every checkpoint around every image.
    for run in runs:
        run["slices"] = []
        for image_index in args.image_index:
            image, label = run["test_set"][image_index]
            run["slices"].append(loss_landscape(
                run["model"], image.unsqueeze(0).to(device), label, radius=run["radius"], steps=args.steps,
                seed=args.seed, clamp=not args.no_clamp, batch_size=args.batch_size,
            ))
        scores = [s.roughness for s in run["slices"]]
        run["mean_roughness"] = float(np.mean(scores))
        print(f"{run['label']} ({run['path']}): roughness " + ", ".join(
            f"{score:.4f} (image {i}, loss {s.loss.min():.3g}..{s.loss.max():.3g})"
            for i, s, score in zip(args.image_index, run["slices"], scores, strict=True))
            + (f"; mean {run['mean_roughness']:.4f}" if len(scores) > 1 else ""))

    # The figure: the first image's slices, surfaces on top and contours below, one colour scale for all.
    shown = [run["slices"][0] for run in runs]
    low = min(float(s.loss.min()) for s in shown)
    high = max(float(s.loss.max()) for s in shown)
    high = high if high > low else low + 1e-6
    levels = np.linspace(low, high, 21)
    norm = plt.Normalize(low, high)
    figure = plt.figure(figsize=(4.6 * len(runs) + 1.2, 9.4))
    grid = figure.add_gridspec(2, len(runs) + 1, width_ratios=[1] * len(runs) + [0.05], height_ratios=[1.15, 1])
    for column, (run, slice_) in enumerate(zip(runs, shown, strict=True)):
        a, b = np.meshgrid(slice_.coords, slice_.coords, indexing="ij")
        surface_axis = figure.add_subplot(grid[0, column], projection="3d")
        surface_axis.plot_surface(a, b, slice_.loss, cmap="viridis", norm=norm, rstride=1, cstride=1,
                                  linewidth=0, antialiased=False)
        surface_axis.set_zlim(low, high)
        surface_axis.set_title(f"{run['label']}\nroughness {slice_.roughness:.4f}, clean loss {slice_.clean_loss:.3g}",
                               fontsize=12)
        surface_axis.set_xlabel("gradient sign (L∞)", fontsize=9, labelpad=6)
        surface_axis.set_ylabel("random ±1 (L∞)", fontsize=9, labelpad=6)
        surface_axis.set_zlabel("cross-entropy (nats)", fontsize=9, labelpad=6)
        surface_axis.tick_params(labelsize=7)
        surface_axis.xaxis.set_major_locator(MaxNLocator(5))
        surface_axis.yaxis.set_major_locator(MaxNLocator(5))
        surface_axis.view_init(elev=30, azim=-60)

        contour_axis = figure.add_subplot(grid[1, column])
        contour_axis.contourf(a, b, slice_.loss, levels=levels, cmap="viridis", norm=norm)
        contour_axis.plot(0, 0, marker="x", color="white", markersize=9, mew=2, label="clean image")
        contour_axis.set_xlabel("gradient-sign direction (L∞ distance, pixel scale [0, 1])", fontsize=9)
        contour_axis.set_ylabel("random ±1 direction (L∞ distance)", fontsize=9)
        contour_axis.set_aspect("equal")
        contour_axis.xaxis.set_major_locator(MaxNLocator(5))
        contour_axis.yaxis.set_major_locator(MaxNLocator(5))
        contour_axis.legend(loc="upper right", fontsize=8, framealpha=0.7)
    colorbar = figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), cax=figure.add_subplot(grid[:, -1]))
    colorbar.set_label("cross-entropy loss (nats)")
    first = runs[0]
    figure.suptitle(
        f"Loss around {first['spec']['dataset']} test image {args.image_index[0]} (label {shown[0].label}), "
        f"{first['spec']['arch']}\n{args.steps} x {args.steps} grid over ±{first['radius']:g} (L∞) per axis"
        + (", clamped to [0, 1]" if not args.no_clamp else ""),
        fontsize=13,
    )
    figure.subplots_adjust(left=0.07, right=0.93, top=0.88, bottom=0.07, wspace=0.35, hspace=0.15)

    # Results: the figure, the grids it was drawn from, and the roughness table.
    arrays = dict(
        labels=np.array([run["label"] for run in runs]),
        checkpoints=np.array([run["path"] for run in runs]),
        image_index=np.array(args.image_index),
        image_label=np.array([[s.label for s in run["slices"]] for run in runs]),
        radius=np.array([run["radius"] for run in runs]),
        coords=np.stack([run["slices"][0].coords for run in runs]),
        loss=np.stack([np.stack([s.loss for s in run["slices"]]) for run in runs]),
        clean_loss=np.array([[s.clean_loss for s in run["slices"]] for run in runs]),
        roughness=np.array([[s.roughness for s in run["slices"]] for run in runs]),
        seed=args.seed, clamp=not args.no_clamp,
    )
    summary = {
        "roughness_definition": roughness.__doc__.strip().splitlines()[0] + " (kwta.landscape.roughness)",
        "steps": args.steps, "seed": args.seed, "clamp": not args.no_clamp, "image_index": args.image_index,
        "checkpoints": [
            {
                "checkpoint": run["path"], "label": run["label"], "spec": run["spec"], "adv_train": run["adv_train"],
                "radius": run["radius"], "mean_roughness": run["mean_roughness"],
                "images": [
                    {"index": i, "label": s.label, "roughness": s.roughness, "clean_loss": s.clean_loss,
                     "loss_min": float(s.loss.min()), "loss_max": float(s.loss.max()),
                     "zero_gradient_fraction": s.zero_gradient_fraction}
                    for i, s in zip(args.image_index, run["slices"], strict=True)
                ],
            }
            for run in runs
        ],
    }
    print("wrote " + ", ".join(save_figure(figure, args.out, arrays=arrays, summary=summary)))


if __name__ == "__main__":
    main()
