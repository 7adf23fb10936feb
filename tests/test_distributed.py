"""DDP training launched by torchrun (2 CPU processes, gloo) against a single-process run on real CyTOF."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import scae
from scae.distributed import build_parser, run, shard_bounds

ARGS = ["--max-epochs", "10", "--hidden", "64", "32", "16", "--batch-size", "256", "--seed", "0"]


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])


def test_shard_bounds_cover_all_rows():
    for n, w in ((10, 3), (7, 2), (1000, 8)):
        b = [shard_bounds(n, r, w) for r in range(w)]
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(b[i][1] == b[i + 1][0] for i in range(w - 1))
        assert max(s - a for a, s in b) - min(s - a for a, s in b) <= 1


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="no torchrun",
)
def test_torchrun_two_processes_matches_single(tmp_path, levine):
    src = tmp_path / "levine.h5ad"
    levine.write_h5ad(src)
    single = _run([sys.executable, "-m", "scae.distributed", str(src), str(tmp_path / "one.h5ad"), *ARGS], tmp_path)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "scae.distributed",
        str(src),
        str(tmp_path / "two.h5ad"),
    ]
    double = _run([*cmd, *ARGS, "--backend", "gloo"], tmp_path)
    assert single["world_size"] == 1 and double["world_size"] == 2
    print(f"final loss: 1 process {single['loss']:.4f}, 2 processes (DDP, gloo) {double['loss']:.4f}")
    assert abs(double["loss"] - single["loss"]) < 0.10 * single["loss"]
    out = ad.read_h5ad(tmp_path / "two.h5ad")
    assert list(out.obs_names) == list(levine.obs_names)
    assert out.obs["sample_name"].equals(levine.obs["sample_name"])
    assert out.obsm["X_scae"].shape == (levine.n_obs, 2) and np.isfinite(out.obsm["X_scae"]).all()
    assert out.obsm["X_scae_codes"].shape == (levine.n_obs, 64)
    assert out.obs["scae_cluster"].notna().all()
    assert out.uns["scae"]["world_size"] == 2
    # outputs are in the original cell order: each cell's imputed profile matches its own input
    rec, X = out.layers["scae_imputed"], np.asarray(levine.X)
    own = np.mean([np.corrcoef(X[i], rec[i])[0, 1] for i in range(0, levine.n_obs, 10)])
    other = np.mean([np.corrcoef(X[i], rec[(i + 1500) % levine.n_obs])[0, 1] for i in range(0, levine.n_obs, 10)])
    assert own > 0.8 and own > other + 0.1


@pytest.mark.parametrize(("flags", "message"), [
    (["--hidden", "64", "0"], "`hidden` must be a non-empty sequence of positive ints, got [64, 0]"),
    (["--batch-size", "1"], "`batch_size` must be None or an int >= 2, got 1"),
    (["--max-epochs", "0"], "`max_epochs` must be None or an int >= 1, got 0"),
    (["--lambda-c", "nan"], "`lambda_c` must be a finite number >= 0, got nan"),
])  # fmt: skip
def test_bad_settings_refused_before_reading(tmp_path, flags, message):
    args = build_parser().parse_args([str(tmp_path / "missing.h5ad"), str(tmp_path / "out.h5ad"), *flags])
    with pytest.raises(ValueError, match=re.escape(message)):
        run(args)  # the input does not exist: the settings are checked before it is opened


def test_in_memory_data_refused_under_torchrun(small, monkeypatch):
    """Under a process group every rank trains on a shard of a backed matrix: in-memory data is refused at once."""
    import torch

    from scae import _dist, _fit

    fake = _dist.ProcessGroup(rank=0, world=2, device=torch.device("cpu"))
    monkeypatch.setattr(_fit._dist, "current", lambda: fake)
    before = small.copy()
    with pytest.raises(ValueError, match=r"under torchrun \(2 processes\) every rank trains on its own rows"):
        scae.tl.fit(small, max_epochs=1, progress=False)
    assert set(small.obsm) == set(before.obsm) and "scae" not in small.uns


def test_shard_of_a_process_group():
    import torch

    from scae._dist import ProcessGroup

    shards = [ProcessGroup(rank=r, world=3, device=torch.device("cpu")).shard(10) for r in range(3)]
    assert shards == [(0, 3), (3, 6), (6, 10)]


_DRAW_SEED = """
import sys, torch, torch.distributed as dist
from scae._dist import current
from scae._reproducible import resolve_seed
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
torch.save([resolve_seed(None, current()), resolve_seed(None, None), resolve_seed(7, current())], out + "." + str(rank))
dist.destroy_process_group()
"""


def test_a_drawn_seed_is_rank_zeros_on_every_rank(two_gloo_processes):
    """``random_state=None`` under torchrun: every rank trains with one seed (rank 0's draw), as with a given one."""
    (shared0, own0, given0), (shared1, own1, given1) = two_gloo_processes(_DRAW_SEED)
    assert shared0 == shared1 and given0 == given1 == 7
    assert own0 != own1  # without the group each process draws its own (equal with probability 2**-32)
