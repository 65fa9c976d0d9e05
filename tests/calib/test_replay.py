"""The statistics pass replayed from the cluster pre-pass equals the recomputed one bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raymoe.calib.stage as stage_mod
from raymoe.calib import CalibConfig
from raymoe.calib.calibration import calibrate
from raymoe.store.calib_stats import CalibStats

pytestmark = pytest.mark.unit

CFG = CalibConfig(samples=6, seq_len=24, micro_batch=2, probe_tokens=8, clusters=3, local=True, seed=1)


def _arrays(stats: CalibStats) -> dict[str, np.ndarray]:
    out = {"seq_cluster": np.asarray(stats.seq_cluster), "seq_pooled": np.asarray(stats.seq_pooled)}
    for l, layer in stats.layers.items():
        for k, v in vars(layer).items():
            if isinstance(v, (np.ndarray, torch.Tensor)):
                out[f"{l}.{k}"] = np.asarray(v)
    return out


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
@pytest.mark.parametrize("stages", [1, 2])
def test_replayed_pass_equals_recomputed(family, stages, tiny_model, monkeypatch):
    path = tiny_model(family)
    cfg = CFG.model_copy(update={"stages": stages})
    calls = []
    orig = stage_mod.Stage._replayed
    monkeypatch.setattr(stage_mod.Stage, "_replayed", lambda self, mb, e: calls.append(mb.batch_id) or orig(self, mb, e))
    replayed = _arrays(calibrate(path, cfg, "tiny", progress=False))
    assert len(calls) == stages * CFG.num_batches  # every batch replayed on every stage
    calls.clear()
    monkeypatch.setattr(stage_mod, "REPLAY_BYTES", 0)  # nothing kept: every batch computed again
    recomputed = _arrays(calibrate(path, cfg, "tiny", progress=False))
    assert not calls
    assert replayed.keys() == recomputed.keys() and len(replayed) > 2
    for k in replayed:
        assert np.array_equal(replayed[k], recomputed[k], equal_nan=True), k


def test_replay_refuses_other_input(tiny_model):
    """A kept batch whose input differs (another calibration on the same stage) is computed, not replayed."""
    from raymoe.calib.batches import make_batches
    from raymoe.calib.calibration import Prepared
    from raymoe.calib.shard import StageRange

    prep = Prepared(tiny_model("qwen2_moe"), CFG, "tiny")
    st = prep.stages[0]
    stage = stage_mod.Stage(str(prep.path), StageRange(0, 0, st.last, True, True, st.nbytes), num_clusters=3)
    ids = prep.data.ids
    stage.forward(make_batches(ids, None, 2, 0, 0, prepass=True)[0])
    assert 0 in stage.replay
    other = make_batches(ids[::-1].copy(), None, 2, 0, 0)[0]
    assert stage._take_replay(other) is None and not stage.replay
