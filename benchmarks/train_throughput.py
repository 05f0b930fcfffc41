"""Training throughput: steps/s of each model on cached features vs with the frozen backbone in
the loop (as the official implementations train), and peak memory, measured side by side in one run.

    python benchmarks/train_throughput.py                      # quick presets, batch 8, CPU or GPU
    python benchmarks/train_throughput.py --preset paper --batch-size 64 --compile   # on a GPU

Synthetic inputs of the right shapes are used (speed does not depend on the values). Each
measurement runs in a fresh process, so its peak memory (CUDA: max allocated; CPU: peak RSS of
the process) is its own. On CUDA it also prints the wall time of the paper's full schedule,
1000 epochs of MVTec-AD's 3 629 training images (drop_last) at the given batch, on cached
features, with bf16 autocast and, with ``--compile``, torch.compile.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch

MVTEC_TRAIN_IMAGES = 3629


def measure(name: str, preset: str, batch: int, steps: int, in_loop: bool, compile_: bool, threads: int,
            backbone_name: str) -> dict:
    """One model, one input path, in this (fresh) process: seconds per step and peak memory."""
    from adnotes.backbone import Backbone
    from adnotes.models import create
    from adnotes.models.objectives import reconstruction_loss

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    multiscale = name == "omniad"
    size = 256 if multiscale and preset == "paper" else 224
    stages = (2, 3, 4) if multiscale else (1, 2, 3, 4)
    weights = "offline" if backbone_name == "efficientnet_lite0" else "none"  # random weights: speed only
    backbone = Backbone(backbone_name, stages=stages, weights=weights).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        shapes = [m.shape[1:] for m in backbone.stage_maps(images[:1])] if multiscale else [backbone(images[:1]).shape[1:]]
    if multiscale:
        model = create(name, preset=preset, in_channels=tuple(s[0] for s in shapes),
                       in_strides=tuple(size // s[-1] for s in shapes))
        cached = lambda: [torch.randn(batch, *s, device=device) for s in shapes]  # noqa: E731
        loop = lambda: backbone.stage_maps(images)  # noqa: E731
    else:
        model = create(name, preset=preset, in_channels=shapes[0][0])
        cached = lambda: torch.randn(batch, *shapes[0], device=device)  # noqa: E731
        loop = lambda: backbone(images)  # noqa: E731
    model = model.to(device)
    run = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    make_input = loop if in_loop else cached
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    for i in range(steps + 3):  # 3 warm-up steps (compilation, allocator)
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x = make_input()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = reconstruction_loss(x, run(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"seconds": seconds, "peak_mib": peak, "params": sum(p.numel() for p in model.parameters()),
            "device": str(device)}


def in_fresh_process(*args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn", "transformer", "uniad", "omniad"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="efficientnet_b4 is UniAD's (random weights here: speed only)")
    args = parser.parse_args()

    b = args.batch_size
    cuda = torch.cuda.is_available()
    print(f"{'cuda' if cuda else 'cpu'}, {args.threads} threads, {args.backbone}, preset {args.preset}, batch {b}, "
          f"bf16 autocast {cuda}, compile {args.compile}; each measurement in a fresh process")
    print(f"{'model':<12}{'params':>9}{'cached steps/s':>16}{'backbone-in-loop':>18}{'ratio':>8}"
          f"{'peak MiB cached':>17}{'in loop':>9}")
    for name in args.models:
        fast, slow = (in_fresh_process(name, args.preset, b, args.steps, loop, args.compile, args.threads,
                                       args.backbone)
                      for loop in (False, True))
        print(f"{name:<12}{fast['params'] / 1e6:>8.2f}M{1 / fast['seconds']:>16.2f}{1 / slow['seconds']:>18.2f}"
              f"{slow['seconds'] / fast['seconds']:>7.1f}×{fast['peak_mib']:>17.0f}{slow['peak_mib']:>9.0f}")
        if cuda:
            steps = 1000 * (MVTEC_TRAIN_IMAGES // b)
            print(f"{'':<12}full schedule (1000 epochs × {MVTEC_TRAIN_IMAGES} images, batch {b}, {steps} steps) "
                  f"on cached features: {steps * fast['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
