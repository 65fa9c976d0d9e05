"""A sweep variant's step key holds the method's validated config (defaults included), not only the written options."""

from raymoe.methods import load_method, parse_options
from raymoe.sweep.records import step_id
from raymoe.sweep.pipeline import SweepVariant


def test_variant_key_holds_the_validated_config_with_defaults():
    written = SweepVariant("c-prune-merge", {}, 0.5, False).params("stats-x")
    full = parse_options(load_method("c-prune-merge"), {}).model_dump(mode="json")
    assert written["config"] == full and full["align"] == "activations"  # a default the options never named
    explicit = SweepVariant("c-prune-merge", {"align": "activations"}, 0.5, False).params("stats-x")
    assert explicit["config"] == written["config"]
    off = SweepVariant("c-prune-merge", {"align": "none"}, 0.5, False).params("stats-x")
    assert off["config"]["align"] == "none"
    assert step_id("variant", off) != step_id("variant", written)
