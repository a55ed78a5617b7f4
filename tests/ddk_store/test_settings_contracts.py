"""The settings kit (ddk_store.settings; campaign 18): types, required fields and choices, --config files, saved
settings, and the click options made from a dataclass. A small settings dataclass declared here (as a stage
declares its own) goes through the real kit; the stages' own dataclasses where a case needs them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import click
import pytest

from ddk_store import settings
from ddk_store.errors import ConfigError
from ddk_store.settings import MODEL, PATH, setting
from stage2_student.config import Stage2Config


@dataclasses.dataclass(frozen=True)
class Demo:
    store: str = setting("", "Store.", required=True, path=PATH, metavar="URL")
    model: str = setting("", "Model.", path=MODEL)
    size: int = setting(4, "Size.")
    rate: float = setting(0.5, "Rate.")
    limit: float | None = setting(None, "Limit.")
    mode: str = setting("a", "Mode.", choices=("a", "b"))
    pick: str | None = setting(None, "Pick.", choices=("x", "y"))
    fast: bool = setting(True, "Fast.")
    slow: bool = setting(False, "Slow.")
    auto: bool | None = setting(None, "Auto: on when there is a GPU.")
    trust: bool = setting(False, "Trust.", typed_only=True)
    opts: dict[str, Any] | None = setting(None, "Opts.", flag="--opt")
    name: str = setting("", "Name.")

    def __post_init__(self) -> None:
        settings.check(self, lambda s: [] if s.size * 2 >= 0 else ["--size must be >= 0"], "demo settings")


@click.command()
@settings.options(Demo)
def demo(**_: Any) -> None:
    pass


def from_argv(argv: list[str]) -> Demo:
    return settings.from_command(Demo, demo.make_context("demo", argv))


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        settings.normalize(Demo, data, "c.yaml")
    return str(e.value)


# ----------------------------------------------------------------------------------------------- values
def test_booleans_are_not_numbers_and_number_text_is_a_float():
    assert problems({"size": True}) == "c.yaml: field 'size': expected int, got True (--size: expected int)"
    assert problems({"rate": True}) == "c.yaml: field 'rate': expected float, got True (--rate: expected float)"
    got = settings.normalize(Demo, {"rate": "3e-4", "limit": 2}, "c.yaml")
    assert got == {"rate": 3e-4, "limit": 2.0} and type(got["limit"]) is float
    assert "--rate must be a finite number, got inf" in problems({"rate": math.inf})
    assert "--limit must be a finite number, got -inf" in problems({"limit": -math.inf})


def test_none_only_where_the_field_is_optional_and_mapping_keys_are_text():
    assert settings.normalize(Demo, {"limit": None, "pick": None, "opts": None}, "c.yaml") == {
        "limit": None, "pick": None, "opts": None}
    assert "field 'size': expected int, got None" in problems({"size": None})
    assert "field 'opts': expected a mapping of KEY: VALUE, got {1: 'x'}" in problems({"opts": {1: "x"}})


def test_required_fields_may_not_be_empty_and_choices_are_checked_once_types_are_right():
    with pytest.raises(ConfigError, match=r"^invalid demo settings: --store is required$"):
        Demo(store="")
    with pytest.raises(ConfigError, match=r"^invalid demo settings: --mode must be one of a, b, got 'c'$"):
        Demo(store="s", mode="c")
    assert Demo(store="s", pick=None).pick is None
    # a wrong type is reported alone: the other checks and the stage's rules assume the types
    with pytest.raises(ConfigError) as e:
        Demo(store="", size="many", mode="c")
    assert str(e.value) == ("invalid demo settings: field 'size': expected int, got 'many' (--size: expected int)")


def test_device_cuda_without_cuda_names_both_ways_out():
    assert settings.device_problem("--device", "cuda", True) is None
    assert settings.device_problem("--device", "auto", False) is None
    msg = settings.device_problem("--device", "cuda", False)
    assert "no CUDA device" in msg and "use --device cpu, or --device auto to use a GPU only when there is one" in msg


# ----------------------------------------------------------------------------------------------- keys
def test_unknown_keys_get_a_guess_and_the_valid_keys_once_after_the_last_unguessed():
    msg = problems({"bogus": 1, "sizee": 2, "other": 3})
    valid = ", ".join(f.name for f in dataclasses.fields(Demo))
    assert msg == ("c.yaml: unknown key 'bogus'; unknown key 'sizee' (did you mean 'size'?); "
                   f"unknown key 'other' (valid keys: {valid})")
    assert problems({"size": True, "bogus": 1}).startswith("c.yaml: unknown key 'bogus' (valid keys: ")
    assert settings.unknown_key_hints(["x"], ["a", "b"], "a or b") == ["unknown key 'x' (valid keys: a or b)"]
    # a flag written with dashes is matched as the field it spells
    with pytest.raises(ConfigError, match=r"unknown key 'sto-opt' \(did you mean 'storage_options'\?\)"):
        settings.normalize(Stage2Config, {"sto-opt": {}}, "c.yaml")


def test_keys_are_trimmed_and_a_field_may_be_written_as_its_own_flag():
    assert settings.normalize(Demo, {" size ": 3, "opt": {"endpoint_url": "u"}}, "c.yaml") == {
        "size": 3, "opts": {"endpoint_url": "u"}}
    assert "key 'opts' sets 'opts' a second time" in problems({"opt": {}, "opts": {}})


# ----------------------------------------------------------------------------------------------- files
def test_a_config_file_reads_paths_from_its_folder_and_keeps_urls_and_hub_ids(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "conf" / "tiny").mkdir(parents=True)
    (home / "conf" / "c.yaml").write_text("store: data/s\nmodel: tiny\nname: data/s\n")
    monkeypatch.chdir(tmp_path)
    got = settings.read_config(Demo, "home/conf/c.yaml")
    assert got == {"store": str(home / "conf" / "data" / "s"), "model": str(home / "conf" / "tiny"),
                   "name": "data/s"}  # name is no path: kept as written
    (home / "conf" / "c.yaml").write_text("store: s3://bucket/s\nmodel: org/hub-model\n")
    assert settings.read_config(Demo, home / "conf" / "c.yaml") == {"store": "s3://bucket/s",
                                                                     "model": "org/hub-model"}


def test_a_config_file_named_with_a_tilde_is_read_from_home_as_every_other_path(tmp_path, monkeypatch):
    """``--config=~/dump.yaml`` (no shell expands a ``~`` after ``=``) names the file in the home folder, as ``~`` in
    --store, --teacher or a path inside the file does; its relative paths are read from its folder."""
    home = tmp_path / "home"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "c.yaml").write_text("store: data/s\nsize: 3\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert settings.read_config(Demo, "~/conf/c.yaml") == {"store": str(home / "conf" / "data" / "s"), "size": 3}
    assert from_argv(["--config=~/conf/c.yaml"]).size == 3


def test_an_empty_file_sets_nothing_and_a_list_is_one_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("")
    assert settings.read_config(Demo, y) == {}
    y.write_text("- store: s\n")
    with pytest.raises(ConfigError, match=r"c.yaml: expected a mapping of field: value, got list$"):
        settings.read_config(Demo, y)


def test_a_typed_only_switch_in_a_file_needs_its_flag_typed_or_a_saved_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("store: s\ntrust: true\n")
    with pytest.raises(ConfigError, match="trust: true is not taken from a file.*type --trust to turn it on"):
        settings.read_config(Demo, y)
    assert "trust" not in settings.read_config(Demo, y, saved=True)
    assert "trust" not in settings.read_config(Demo, y, typed=("trust",))
    assert from_argv(["--config", str(y), "--trust"]).trust is True
    y.write_text("store: s\ntrust: false\n")
    assert "trust" not in settings.read_config(Demo, y)


def test_flags_typed_override_the_file_which_overrides_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(f"store: {tmp_path / 's'}\nsize: 7\nrate: 0.25\nfast: false\n")
    cfg = from_argv(["--config", str(y), "--size", "9", "--slow"])
    assert (cfg.size, cfg.rate, cfg.fast, cfg.slow, cfg.mode) == (9, 0.25, False, True, "a")
    assert from_argv(["--config", str(y), "--fast"]).fast is True
    assert settings.resolve(Demo, {"size": None, "store": "t"}, y).size == 7  # None: not typed
    assert settings.build(Demo, {"store": "a", "size": 1}, {"size": 2}).size == 2


# ----------------------------------------------------------------------------------------------- saved settings
def test_saved_settings_drop_credentials_at_any_depth_and_make_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Demo(store="rel/s", opts={"endpoint_url": "http://h", "AWS_SECRET_ACCESS_KEY": "S",
                                    "client_kwargs": {"aws_session_token": "T", "region_name": "r"}})
    saved = settings.saved_dict(cfg)
    assert saved["store"] == str(tmp_path / "rel" / "s")
    assert saved["opts"] == {"endpoint_url": "http://h", "client_kwargs": {"region_name": "r"}}
    assert settings.saved_dict(Demo(store="s3://b/s", opts={"Password": "p"}))["opts"] is None
    assert settings.saved_dict(Demo(store="s3://b/s"))["store"] == "s3://b/s"


# ----------------------------------------------------------------------------------------------- options
def test_help_shows_required_and_defaults_and_every_boolean_has_its_off_switch():
    text = demo.get_help(click.Context(demo, info_name="demo"))
    flat = " ".join(text.split())
    assert "Store. [required]" in flat and "Size. [default: 4]" in flat
    assert "Fast. [default: on]" in flat and "Slow. [default: off]" in flat
    assert "Name. [default" not in flat and "Limit. [default" not in flat and "GPU. [default" not in flat
    assert flat.index("--config") < flat.index("--store") < flat.index("--size") < flat.index("--opt")  # field order
    assert from_argv(["--store", "s", "--no-fast"]).fast is False
    assert from_argv(["--store", "s", "--opts", "a=1"]).opts == {"a": 1}  # the field's own name works too
    assert from_argv(["--store", "s", "--opt", "a=1"]).opts == {"a": 1}
    assert from_argv(["--store", "s"]).opts is None


@dataclasses.dataclass(frozen=True)
class Switches:
    quick_mode: bool = setting(False, "Quick.", flag="--quick", aliases=("--fast",))


@click.command()
@settings.options(Switches)
def switches(**_: Any) -> None:
    pass


@pytest.mark.parametrize("on, off", [("--quick", "--no-quick"), ("--quick-mode", "--no-quick-mode"),
                                     ("--fast", "--no-fast")])
def test_a_switch_answers_to_its_flag_its_fields_name_and_its_aliases_each_with_its_off_form(on, off):
    def read(argv):
        return settings.from_command(Switches, switches.make_context("switches", argv))

    assert read([on]).quick_mode is True and read([off]).quick_mode is False and read([]).quick_mode is False
    flat = " ".join(switches.get_help(click.Context(switches, info_name="switches")).split())
    assert flat.index("--quick") < flat.index("--quick-mode")  # the flag first, as messages and docs spell it
