"""Option validation: bad E / K / layout combinations fail with one clear RaymoeError line."""

import pytest

from raymoe.errors import RaymoeError
from raymoe.testbed.config import DENSE_MLP_WIDTH, LAYOUT_DEFAULTS, TestbedConfig, TestbedConfigError


def test_defaults_follow_the_layout():
    shared = TestbedConfig.parse()
    assert (shared.layout, shared.experts, shared.top_k, shared.shared) == (
        "shared", LAYOUT_DEFAULTS["shared"]["experts"], LAYOUT_DEFAULTS["shared"]["top_k"],
        LAYOUT_DEFAULTS["shared"]["shared"])
    assert shared.top_k < shared.experts  # sparse routing by default
    mix = TestbedConfig.parse(layout="mixtral")
    assert mix.shared == 0 and mix.routed_width == DENSE_MLP_WIDTH
    assert mix.expert_width * mix.experts == DENSE_MLP_WIDTH
    assert shared.expert_width * shared.experts + shared.shared == DENSE_MLP_WIDTH


@pytest.mark.parametrize("opts, needle", [
    (dict(experts=7), "--experts 7 does not divide the routed MLP width 1024"),
    (dict(layout="mixtral", experts=10), "--experts 10 does not divide the routed MLP width 1536"),
    (dict(experts=8, top_k=9), "--top-k 9 exceeds --experts 8"),
    (dict(layout="mixtral", shared=256), "--shared applies to layout shared only"),
    (dict(shared=0), "--shared must be in 1..1535"),
    (dict(experts=8, strata=3), "--strata 3 does not divide --experts 8"),
    (dict(layout="moe"), "invalid testbed option --layout"),
    (dict(top_k=0), "invalid testbed option --top-k"),
    (dict(experts="many"), "invalid testbed option --experts"),
])
def test_bad_options_raise_one_line(opts, needle):
    with pytest.raises(TestbedConfigError) as info:
        TestbedConfig.parse(**opts)
    assert isinstance(info.value, RaymoeError)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_hash_tracks_every_option():
    base = TestbedConfig.parse()
    assert base.digest() == TestbedConfig.parse(experts=base.experts).digest()  # explicit default == default
    others = [TestbedConfig.parse(**o) for o in (dict(seed=1), dict(top_k=2), dict(calib_tokens=8192),
                                                  dict(down="k"), dict(layout="mixtral"))]
    digests = {base.digest(), *(c.digest() for c in others)}
    assert len(digests) == 1 + len(others)
