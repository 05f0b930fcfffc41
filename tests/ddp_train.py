"""Train the tiny UniAD of the tests into runs folder argv[1]; run it plainly or under torchrun.

    python tests/ddp_train.py OUT                                     # one process
    torchrun --standalone --nproc_per_node 2 tests/ddp_train.py OUT   # two, gloo on CPU
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import tiny_config, tiny_features  # noqa: E402

from adnotes.train import train  # noqa: E402

torch.set_num_threads(1)
# No dropout or jitter: their random draws differ per process, everything else must match.
cfg = tiny_config(steps=8)
cfg.model.args["jitter_prob"] = 0.0
train(cfg, "ddp", runs=sys.argv[1], features=tiny_features())
