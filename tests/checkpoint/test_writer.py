"""The streaming shard writer: write-behind copies and blocks, page-phase header padding, write errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from raymoe.checkpoint.writer import PAGE, OutTensor, ShardWriter, WriteBehind, copy_phase
from raymoe.moe import SafetensorsCheckpoint
from raymoe.moe.safetensors_files import read_header


def test_copies_blocks_and_phase(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = {f"t{i}": torch.randn(300 + i, 7, generator=g) for i in range(5)}
    save_file(src, str(tmp_path / "src.safetensors"))
    (tmp_path / "ck").mkdir()
    (tmp_path / "src.safetensors").rename(tmp_path / "ck" / "model.safetensors")
    ck = SafetensorsCheckpoint(tmp_path / "ck")
    new = torch.randn(64, 7, generator=g)
    names = ["t0", "t1", "new", "t3", "t4"]  # t0, t1 adjacent in the source: one coalesced copy
    outs = [OutTensor(n, "F32", tuple(new.shape if n == "new" else src[n].shape)) for n in names]
    rel = {n: sum(o.nbytes for o in outs[:i]) for i, n in enumerate(names)}
    phase = copy_phase([(ck.infos[n].start, rel[n], ck.infos[n].nbytes) for n in names if n != "new"])
    io = WriteBehind()
    w = ShardWriter(tmp_path / "out.safetensors", outs, io=io, data_phase=phase)
    w.copy_from("t0", ck.infos["t0"])
    w.copy_from("t1", ck.infos["t1"])
    w.begin("new")
    w.write_block(new[:10])
    w.write_block(new[10:])
    w.copy_from("t3", ck.infos["t3"])
    w.copy_from("t4", ck.infos["t4"])
    w.close()
    io.close()
    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(names)
    for n in names:
        assert torch.equal(got[n], new if n == "new" else src[n])
    _, data_start = read_header(tmp_path / "out.safetensors")
    assert data_start % PAGE == phase and phase % 8 == 0
    # the phase puts the most copied bytes at their source's page offset
    aligned = [n for n in names if n != "new" and (ck.infos[n].start - data_start - rel[n]) % PAGE == 0]
    assert aligned


def test_copy_phase_weighs_bytes():
    assert copy_phase([(8, 0, 10), (4096 + 16, 0, 30), (24, 0, 5)]) == 16
    assert copy_phase([]) == 0
    assert copy_phase([(3, 0, 100)]) == 0  # never a phase off the 8-byte grid


def test_write_errors_surface_and_nothing_is_left(tiny_model, tmp_path, monkeypatch):
    import raymoe.checkpoint.writer as writer
    from raymoe.checkpoint import apply_plan
    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, MergeGroup, PrunePlan

    src = tiny_model("mixtral")
    spec = MoeModelSpec.from_pretrained(src)
    plan = PrunePlan(method="manual", model=str(src), model_type="mixtral",
                     layers=[LayerPlan(layer=l, num_experts=8, keep=[0, 2, 4, 6],
                                       merges=[MergeGroup(target=0, members=[0, 1], weights=[0.5, 0.5])])
                             for l in spec.moe_layers])
    calls = {"n": 0}
    real = writer._pwrite_all

    def failing(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(writer, "_pwrite_all", failing)
    with pytest.raises(OSError, match="No space left"):
        apply_plan(src, plan, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary sibling
