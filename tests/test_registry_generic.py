"""raymoe.registry.Registry: lazy, cached "module:attr" entries and one unknown-name error."""

import sys

import pytest

from raymoe.errors import RaymoeError
from raymoe.registry import Registry, UnknownNameError


class Oops(RaymoeError):
    pass


def test_lazy_cached_and_listed_without_import():
    reg: Registry[type] = Registry("codec", {"json": "json.decoder:JSONDecoder", "obj": int})
    assert reg.names() == ["json", "obj"] and "json" in reg and len(reg) == 2 and list(reg) == ["json", "obj"]
    first = reg.get("json")
    import json.decoder

    assert first is json.decoder.JSONDecoder and reg.get("json") is first  # cached
    assert reg.get("obj") is int and reg.target("json") == "json.decoder:JSONDecoder"


def test_nothing_imported_until_asked(tmp_path, monkeypatch):
    (tmp_path / "raymoe_reg_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("probe", {"p": "raymoe_reg_probe:LOADED"})
    assert "raymoe_reg_probe" not in sys.modules and reg.names() == ["p"]
    assert reg.get("p") is True and "raymoe_reg_probe" in sys.modules
    sys.modules.pop("raymoe_reg_probe")


def test_unknown_name_one_format_and_error_class():
    reg = Registry("widget", {"a": "json:dumps", "b": "json:loads"}, error=Oops)
    with pytest.raises(Oops, match=r"^unknown widget 'c' \(known: a, b\)$"):
        reg.get("c")
    with pytest.raises(UnknownNameError, match="unknown thing 'x' \\(known: \\)"):
        Registry("thing").get("x")


def test_bad_registrations():
    reg = Registry("widget", {"a": "json:dumps"})
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a", "json:loads")
    with pytest.raises(ValueError, match="is not 'module:attr'"):
        reg.register("b", "json.dumps")
