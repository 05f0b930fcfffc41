"""Training throughput: steps/s of each model on cached features vs with the frozen backbone in the
loop (as the official implementations train), measured side by side in one run.

    python benchmarks/train_throughput.py                 # quick presets, batch 8, CPU or GPU
    python benchmarks/train_throughput.py --preset paper --batch-size 64

Synthetic inputs of the right shapes are used (speed does not depend on the values). On CUDA it
also reports peak memory and the wall time of the paper's full schedule, 1000 epochs of
MVTec-AD's 3 629 training images, on cached features, with bf16 autocast (and torch.compile when
``--compile``).
"""
from __future__ import annotations

import argparse
import time

import torch

from adnotes.backbone import Backbone
from adnotes.models import create
from adnotes.models.objectives import reconstruction_loss


def step_time(model, make_input, steps: int, device, amp: bool) -> float:
    """Seconds per training step (AdamW, clip 0.1), after 2 warm-up steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x = make_input()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = reconstruction_loss(x, model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn", "transformer", "uniad"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    backbone = Backbone().to(device)  # offline Lite0, 192 channels at 14×14 for 224² images
    b, c = args.batch_size, backbone.out_channels
    cached = lambda: torch.randn(b, c, 14, 14, device=device)  # noqa: E731
    images = torch.randn(b, 3, 224, 224, device=device)
    in_loop = lambda: backbone(images)  # noqa: E731

    print(f"device {device}, {torch.get_num_threads()} threads, preset {args.preset}, batch {b}, "
          f"bf16 autocast {amp}, compile {args.compile}")
    print(f"{'model':<12}{'params':>10}{'cached steps/s':>16}{'backbone-in-loop':>18}{'ratio':>8}{'peak MiB':>10}")
    for name in args.models:
        model = create(name, preset=args.preset, in_channels=c).to(device)
        run = torch.compile(model) if args.compile else model
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fast = step_time(run, cached, args.steps, device, amp)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        slow = step_time(run, in_loop, args.steps, device, amp)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<12}{params:>9.2f}M{1 / fast:>16.2f}{1 / slow:>18.2f}{slow / fast:>7.1f}×{peak:>10.0f}")
        if device.type == "cuda":
            steps = 1000 * 3629 / b
            print(f"{'':<12}full schedule (1000 epochs × 3 629 images, batch {b}) on cached features: "
                  f"{steps * fast / 60:.1f} min")


if __name__ == "__main__":
    main()
