"""apply's merge kernel: sum_i w_i P_i(W_i) against a direct recomputation, float32 and bfloat16, both axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raymoe.checkpoint.apply import _combine, _Scratch
from raymoe.moe import SafetensorsCheckpoint


@pytest.mark.parametrize("dtype,code", [(torch.float32, "F32"), (torch.bfloat16, "BF16")])
def test_combine_equals_the_weighted_sum_of_permuted_members(tmp_path, dtype, code):
    g = torch.Generator().manual_seed(0)
    t = {n: torch.randn(*s, generator=g).to(dtype) for n, s in
         (("g0", (3000, 40)), ("g1", (3000, 40)), ("g2", (3000, 40)), ("d0", (40, 3000)), ("d1", (40, 3000)))}
    save_file(t, str(tmp_path / "model.safetensors"))
    ck, scratch = SafetensorsCheckpoint(tmp_path), _Scratch()  # 3000 x 40 x 4 B > one 1 MB block: several blocks
    p1, p2 = (torch.as_tensor(np.random.default_rng(s).permutation(3000)) for s in (1, 2))
    cases = [(0, [("g0", 0.5, None), ("g1", 0.3, p1), ("g2", 0.2, p2)]), (0, [("g1", 0.7, p1), ("g0", 0.3, None)]),
             (0, [("g1", 0.6, p1), ("g2", 0.4, p2)]), (1, [("d0", 0.6, None), ("d1", 0.4, p1)]),
             (None, [("g0", 0.5, None), ("g1", 0.5, None)])]
    for axis, parts in cases:
        got = _combine(ck, scratch, parts, code, axis).clone()  # the result lives in a reused buffer

        def aligned(name, perm):
            w = t[name].double()
            return w if perm is None else (w[perm] if axis == 0 else w[:, perm])

        ref = sum(w * aligned(n, q) for n, w, q in parts)
        assert got.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-6)
        else:  # the float32 sum rounded once to bfloat16: within one bfloat16 ulp of the exact sum
            assert ((got.double() - ref).abs() <= ref.abs() * 2.0 ** -7 + 1e-6).all()
