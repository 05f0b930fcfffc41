"""GPU smoke test: every path of the CUDA trainer in one run and one table, for a session that is lent a GPU.

    python benchmarks/gpu_smoke.py --out DIR            # on a GPU: paper-size models, under 5 minutes
    python benchmarks/gpu_smoke.py --tiny --out DIR     # on a CPU: tiny sizes, the same checks end to end

Checks, one row each (synthetic cached features of each config's shapes; the values do not matter):

- ``environment``: the device, and whether torch.compile can run here (Triton, a C compiler);
- ``gpu tests``: the tests marked ``gpu`` (skipped without CUDA);
- ``uniad``: paper-size UniAD with the neighbour mask, jitter, bf16 and torch.compile: its training
  forward is one graph (torch._dynamo.explain) and nothing recompiles after the warm-up;
- ``cnn``: trained with channels-last memory (on CUDA); ``haloae``: image branch, CutPaste views and
  ``eval.normalize``; ``omniad``: multi-scale features, its config's fp32; ``adtr+``: starts from an
  ADTR run's weights (``train.init``). These four train eager, to keep the run short;
- ``resume``: a run stopped by Ctrl-C and resumed against an uninterrupted one (bit-exact on a CPU;
  on CUDA the difference is printed), then a resume of the finished run: no step added and
  ``metrics.json`` unchanged;
- ``ssim``: HaloAE's SSIM under bf16 autocast against float32;
- ``throughput``: ``benchmarks/train_throughput.py`` for UniAD (paper: 200 steps, bf16+compile vs fp32
  eager, the projected wall time of the paper's 56 000-step schedule);
- ``ddp``: the gloo DDP test (two processes, CUDA hidden).

The table is printed and written to ``DIR/gpu_smoke.md``; the exit status is 1 when a check failed.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as throughput  # noqa: E402

import adnotes.train as trainer  # noqa: E402
from adnotes.models.haloae import ssim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Tiny sizes (--tiny): overrides and feature shapes per model, as the tests' tiny models.
TINY = {
    "uniad": (["model.args={hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, num_decoder_layers: 1, "
               "neighbor_size: 3}", "data.image_size=32"], [(8, 4, 4)]),
    "cnn": (["model.args={hidden: 16}", "data.image_size=32"], [(8, 4, 4)]),
    "haloae": (["model.args={head_channels: 8, dim_head: 4, block_size: 2, halo: 1, image_channels: 8, "
                "image_middle: 1, image_size: 32}", "data.image_size=32", "data.keep_images=32", "train.batch_size=6"], [(8, 8, 8)]),
    "omniad": (["model.args={widths: [16, 8, 8, 8], num_tokens: 4, heads: 2}", "data.image_size=64"],
               [(4, 16, 16), (6, 8, 8), (8, 4, 4)]),
    "adtr": (["data.image_size=32", "train.batch_size=4"], [(8, 4, 4)]),
}
ADTR_TINY = "feature_size: 4, hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, num_decoder_layers: 1"


class Smoke:
    """Runs the checks and collects one row per check."""

    def __init__(self, tiny: bool, out: Path):
        self.tiny, self.out, self.rows = tiny, out, []
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.preset = "quick" if tiny else "paper"

    def check(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            ok, details = fn()
        except Exception as error:  # a failed check is a row, the others still run
            traceback.print_exc()
            ok, details = False, f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
        self.rows.append((name, "ok" if ok else "FAIL", details, time.perf_counter() - start))
        print(f"[{self.rows[-1][1]}] {name}: {details}", flush=True)

    def features(self, cfg, model: str, n_train: int, n_test: int):
        shapes = TINY[model][1] if self.tiny else throughput.feature_shapes(cfg)
        return throughput.synthetic_features(cfg, shapes, n_train, n_test)

    def config(self, model: str, steps: int, every: int, *more: str):
        tiny = TINY[model][0] if self.tiny else []
        return throughput.bench_config(model, self.preset, "bf16+compile", steps - every, every,
                                       [*tiny, "eval.copy_images=0", *more])

    def fit(self, cfg, data, folder: Path):
        table = trainer.fit(cfg, *data, folder / "seed0", seed=0, desc=folder.name)
        curves = folder / "seed0" / "curves.csv"
        return table, trainer.pd.read_csv(curves)

    # ------------------------------------------------------------------------- the checks
    def environment(self):
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        compiles = trainer._compile_works(self.device) if self.device.type == "cuda" else "n/a on a CPU"
        return True, f"{name}, torch {torch.__version__}, torch.compile works: {compiles}"

    def gpu_tests(self):
        files = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files],
                              cwd=ROOT, capture_output=True, text=True)
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        return done.returncode in (0, 5), last  # 5: nothing collected

    def uniad(self, tmp: Path):
        from torch._dynamo.utils import counters

        steps = 8 if self.tiny else 60
        cfg = self.config("uniad", steps, steps // 2)
        data = self.features(cfg, "uniad", 64 if self.tiny else 256, 8 if self.tiny else 32)
        model = trainer.build_model(cfg, data[0]).to(self.device).train()
        c = model.config
        assert all(c.neighbor_mask) and c.jitter_prob == 1 and c.jitter_scale > 0, "mask or jitter is off"
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(data[0].take(torch.arange(2), self.device))
        torch._dynamo.reset()
        real, calls = torch.compile, []

        def counting(module, **kwargs):  # dynamo's unique graphs after each compiled training step
            compiled = real(module, **kwargs)
            if not isinstance(module, torch.nn.Module):
                return compiled
            return lambda *a, **k: (compiled(*a, **k), calls.append(counters["stats"]["unique_graphs"]))[0]

        torch.compile = counting
        try:
            table, curves = self.fit(cfg, data, tmp / "uniad")
        finally:
            torch.compile = real
        recompiles = calls[-1] - calls[2] if len(calls) > 3 else None
        graphs = explained.graph_count, explained.graph_break_count
        first, last, seconds, _ = table.attrs["timing"][-1]
        ok = graphs == (1, 0) and recompiles in (None, 0) and _finite(curves)
        return ok, (f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, bf16 "
                    f"{cfg.train.amp and self.device.type == 'cuda'}, compiled {bool(calls)}; training forward: "
                    f"{graphs[0]} graph, {graphs[1]} breaks; recompiles after warm-up: "
                    f"{'n/a (not compiled)' if recompiles is None else recompiles}; {(last - first) / seconds:.1f} "
                    f"steps/s; image AUROC {table.loc['mean', 'image_AUROC']:.3f} (random features)")

    def eager(self, name: str, tmp: Path, check, *more: str, folder: str | None = None):
        """Train a model eager for a few steps; ``check(model, table)`` -> (ok, details)."""
        cfg = self.config(name, 4 if self.tiny else 8, 2 if self.tiny else 4, "train.compile=false", *more)
        built, build = [], trainer.build_model
        trainer.build_model = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
        try:
            table, curves = self.fit(cfg, self.features(cfg, name, 24, 8), tmp / (folder or name))
        finally:
            trainer.build_model = build
        ok, details = check(built[-1], table)
        return ok and _finite(curves), f"{details}; image AUROC {table.loc['mean', 'image_AUROC']:.3f}"

    def cnn(self, tmp: Path):
        def check(model, table):
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
            last = conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
            return last == (self.device.type == "cuda"), f"channels-last weights: {last} (on CUDA only)"
        return self.eager("cnn", tmp, check)

    def haloae(self, tmp: Path):
        def check(model, table):
            image = float(model.last_losses["im"])
            return image > 0, f"image-branch loss (MSE + 1 − SSIM) {image:.3f}, eval.normalize on"
        return self.eager("haloae", tmp, check, "eval.normalize=true")

    def omniad(self, tmp: Path):
        return self.eager("omniad", tmp, lambda model, table: (True, f"channels per scale {model.config.in_channels}"))

    def adtr_plus(self, tmp: Path):
        def args(loss: str) -> str:
            return f"model.args={{{ADTR_TINY + ', ' if self.tiny else ''}loss: {loss}}}"

        self.eager("adtr", tmp, lambda model, table: (True, ""), args("mse"))
        start = tmp / "adtr" / "seed0" / "checkpoint.pt"

        def check(model, table):
            first = torch.load(tmp / "adtr+" / "seed0" / "weights_step0.pt", weights_only=True)
            adtr = torch.load(start, weights_only=True)["model"]
            same = all(torch.equal(first[k].cpu(), adtr[k].cpu()) for k in adtr)
            return same, f"push-pull loss on confetti views, starts from ADTR's final weights: {same}"
        return self.eager("adtr", tmp, check, args("pushpull_pixel"), f"train.init={start}", "data.synthetic=confetti",
                          "eval.keep_steps=[0]", folder="adtr+")

    def resume(self, tmp: Path):
        cfg = self.config("uniad", 8 if self.tiny else 40, 2 if self.tiny else 10)
        data = self.features(cfg, "uniad", 64 if self.tiny else 256, 8 if self.tiny else 32)
        whole = trainer.train(cfg, "whole", runs=tmp, features=data)
        batches = trainer._batches
        stop = cfg.train.steps // 2 + 1  # between two evaluations

        def ctrl_c(n, batch_size, seed, step):
            if step == stop - 1:
                os.kill(os.getpid(), signal.SIGINT)
            return batches(n, batch_size, seed, step)

        trainer._batches = ctrl_c
        # Ctrl-C as at a terminal, also where this script was started with SIGINT ignored (nohup, a test runner)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            trainer.train(cfg, "cut", runs=tmp, features=data)
            return False, "Ctrl-C did not stop the run"
        except trainer.TrainingInterrupted:
            pass
        finally:
            trainer._batches = batches
            signal.signal(signal.SIGINT, previous)
        cut = trainer.train(cfg, "cut", runs=tmp, features=data, resume=True)
        a, b = (torch.load(r / "seed0" / "checkpoint.pt", weights_only=True)["model"] for r in (whole, cut))
        delta = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        files = [whole / "seed0" / f for f in ("metrics.json", "curves.csv", "checkpoint.pt")]
        before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
        trainer.train(cfg, "whole", runs=tmp, features=data, resume=True)
        unchanged = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == before
        exact = self.device.type == "cpu"
        ok = unchanged and (delta == 0 if exact else delta < 1e-2)
        return ok, (f"stopped at step {stop} and resumed: largest weight difference to the uninterrupted run "
                    f"{delta:.2e} "
                    f"({'bit-exact expected' if exact else 'CUDA: same random draws, atomics differ'}); finished run "
                    f"resumed: no step added, metrics.json unchanged: {unchanged}")

    def ssim_bf16(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(4, 3, 64, 64, generator=g).to(self.device)
        y = (x + 0.01 * torch.randn(4, 3, 64, 64, generator=g).to(self.device))
        want = ssim(x, y).item()
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            got = ssim(x, y)
        diff = abs(got.item() - want)
        return got.dtype == torch.float32 and diff < 1e-6 and got.item() <= 1, (
            f"float32 {want:.6f}, under bf16 autocast {got.item():.6f} ({got.dtype}), difference {diff:.1e}")

    def throughput(self):
        if self.tiny:
            rows = throughput.run(["uniad"], "quick", steps=4, warmup=2, train_images=32, test_images=8, threads=1,
                                  overrides=[TINY["uniad"][0][0], "data.image_size=64", "eval.copy_images=0"])
        else:
            rows = throughput.run(["uniad"], "paper", steps=200, warmup=20)
        (self.out / "train_throughput.txt").write_text(throughput.format_rows(rows) + "\n")
        parts = []
        for r in rows:
            text = f"{r['variant']}: {r['steps_per_s']:.1f} steps/s ({r['synced_steps_per_s']:.1f} with 3 syncs)"
            if r.get("projected_min"):
                train_min, eval_min = r["projected_min"]
                text += f", {r['schedule'][0]} steps ≈ {train_min:.1f} min + {eval_min:.1f} min evaluation"
            parts.append(text)
        return all(r["steps_per_s"] > 0 for r in rows), "; ".join(parts)

    def ddp(self):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_train.py",
                               "-k", "gloo"], cwd=ROOT, capture_output=True, text=True,
                              env=os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        return done.returncode == 0 and " passed" in last, last

    def run_all(self) -> bool:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            self.check("environment", self.environment)
            self.check("gpu tests", self.gpu_tests)
            self.check("uniad", lambda: self.uniad(tmp))
            self.check("cnn", lambda: self.cnn(tmp))
            self.check("haloae", lambda: self.haloae(tmp))
            self.check("omniad", lambda: self.omniad(tmp))
            self.check("adtr+", lambda: self.adtr_plus(tmp))
            self.check("resume", lambda: self.resume(tmp))
            self.check("ssim", self.ssim_bf16)
            self.check("throughput", self.throughput)
            self.check("ddp", self.ddp)
        return all(status == "ok" for _, status, _, _ in self.rows)

    def table(self) -> str:
        lines = [f"GPU smoke ({'tiny, ' if self.tiny else ''}{self.device}), {time.strftime('%Y-%m-%d %H:%M')}", "",
                 "| check | result | seconds | details |", "|---|---|---|---|"]
        lines += [f"| {name} | {status} | {seconds:.0f} | {details.replace('|', '/')} |"
                  for name, status, details, seconds in self.rows]
        return "\n".join(lines) + "\n"


def _finite(curves) -> bool:
    """Every logged training loss is a finite number."""
    loss = curves.loss.dropna()
    return bool(len(loss)) and bool(loss.map(lambda v: abs(float(v)) < float("inf")).all())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_smoke.md (and the throughput table)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and data: the CPU run of the tests")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(args.tiny, args.out)
    ok = smoke.run_all()
    table = smoke.table()
    (args.out / "gpu_smoke.md").write_text(table)
    print("\n" + table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
