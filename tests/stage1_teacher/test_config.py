"""Stage1Config validation and the CLI <-> dataclass mirror (flags, --config YAML, precedence, errors)."""

from __future__ import annotations

import dataclasses

import pytest

from ddk_store.errors import ConfigError
from ddk_store import settings
from stage1_teacher.cli import cli
from stage1_teacher.config import Stage1Config

from ddk_testkit.processes import run_cli

REQ = {"teacher": "t", "corpora": "c.yaml", "store": "s"}


def test_defaults_match_the_product_contract():
    cfg = Stage1Config(**REQ)
    assert (cfg.seq_len, cfg.top_k, cfg.heldout_seqs, cfg.backend, cfg.shard, cfg.overwrite) == (
        1024, 64, 500, "auto", "0/1", False)
    assert cfg.trust_remote_code is False
    assert (cfg.shard_index, cfg.shard_count) == (0, 1)


def test_every_field_is_typed_defaulted_and_documented():
    for f in dataclasses.fields(Stage1Config):
        assert f.type in ("int", "int | None", "str", "bool", "dict[str, Any] | None"), f.name
        assert f.default is not dataclasses.MISSING, f.name
        assert len(f.metadata["help"]) > 15, f.name


def test_all_problems_are_collected_into_one_error():
    with pytest.raises(ConfigError) as e:
        Stage1Config(teacher="", corpora="c", store="s", seq_len=1, top_k=0, shard="2/2", backend="tpu")
    msg = str(e.value)
    for needle in ("--teacher is required", "--seq-len must be >= 2", "--top-k must be >= 1",
                   "--shard must be I/N", "--backend must be one of"):
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("shard", ["1", "a/b", "3/2", "-1/2", "0/0"])
def test_bad_shard_values(shard):
    with pytest.raises(ConfigError, match="--shard must be I/N"):
        Stage1Config(**REQ, shard=shard)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with --shard"):
        Stage1Config(**REQ, overwrite=True, shard="0/2")
    with pytest.raises(ConfigError, match="needs --backend vllm"):
        Stage1Config(**REQ, backend="hf", tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="--batch-tokens"):
        Stage1Config(**REQ, backend="hf", seq_len=64, batch_tokens=32)
    # vLLM and pack never read --batch-tokens: a long --seq-len is not refused for it
    assert Stage1Config(**REQ, backend="vllm", seq_len=16384).batch_tokens == 8192
    assert Stage1Config(**REQ, backend="auto", seq_len=16384).seq_len == 16384
    with pytest.raises(ConfigError, match="--storage-option: expected a mapping"):
        Stage1Config(**REQ, storage_options=[1])
    s3 = {**REQ, "store": "s3://bucket/prefix"}
    assert Stage1Config(**s3, storage_options={"endpoint_url": "x"}).storage_options_dict == {"endpoint_url": "x"}
    # a dump would create the local folder 'bucket/prefix': storage options name the likely missing s3://
    with pytest.raises(ConfigError, match=r"--store 'bucket/prefix' is not an s3:// location, but storage options "
                                          r"\(endpoint_url\) were given"):
        Stage1Config(**{**REQ, "store": "bucket/prefix"}, storage_options={"endpoint_url": "x"})


def test_cli_options_mirror_the_dataclass_fields():
    dump = cli.commands["dump"]
    options = {p.name for p in dump.params}
    assert options == {f.name for f in dataclasses.fields(Stage1Config)} | {settings.CONFIG_PARAM}
    flags = {o for p in dump.params for o in p.opts}
    for f in dataclasses.fields(Stage1Config):
        assert "--" + f.name.replace("_", "-") in flags
    # The flag names of the command-line contract (README.md, docs/stage1.md) exist verbatim.
    for name in ("--teacher", "--corpora", "--store", "--seq-len", "--top-k", "--heldout-seqs", "--backend",
                 "--shard", "--overwrite", "--config"):
        assert name in flags


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("teacher: from-yaml\ncorpora: c.yaml\nstore: s\ntop_k: 16\nseq_len: 128\n")
    flags = {f.name: None for f in dataclasses.fields(Stage1Config)}
    cfg = settings.resolve(Stage1Config, {**flags, "top_k": 4}, str(y))
    assert cfg.top_k == 4  # flag beats YAML
    assert cfg.seq_len == 128  # YAML beats default
    assert cfg.heldout_seqs == 500  # default
    assert cfg.teacher == "from-yaml"


def test_unknown_or_mistyped_yaml_keys_are_errors(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("teacher: t\ntopk: 3\nseq_len: '12'\n")
    with pytest.raises(ConfigError) as e:
        settings.resolve(Stage1Config, {}, str(y))
    assert "unknown key 'topk'" in str(e.value) and "field 'seq_len': expected int" in str(e.value)


def test_cli_reports_config_errors_on_one_line_with_exit_2(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("nonsense_key: 1\n")
    code, err = run_cli("ddk-teacher", ["dump", "--config", str(y)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nonsense_key" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("shard", ["00/3", "1/03", "\uff11/3", " 1/3", "1/3/4", "3/3", "0/0", "-1/3"])
def test_shard_is_plain_ascii_digits_without_leading_zeros(shard):
    with pytest.raises(ConfigError, match="--shard must be I/N"):
        Stage1Config(**REQ, shard=shard)
    assert Stage1Config(**REQ, shard="10/12").shard_index == 10
