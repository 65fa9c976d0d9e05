"""The real-data testbed: SmolLM2-135M MoEfied into a stock sparse MoE (see README.md here)."""

from raymoe.testbed.build import MANIFEST, TestbedResult, build_testbed, read_manifest
from raymoe.testbed.config import LAYOUT_DEFAULTS, TestbedConfig, TestbedConfigError

__all__ = ["MANIFEST", "LAYOUT_DEFAULTS", "TestbedConfig", "TestbedConfigError", "TestbedResult", "build_testbed",
           "read_manifest"]
