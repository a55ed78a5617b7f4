"""read_yaml, the reader of every YAML file a user names (--corpora, --config, a run's config.yaml), found unchecked by
mutation campaign 14: YAML merge keys work, every malformed file is one ConfigError naming the flag, the file and
the 1-based line, never a Python error."""

from __future__ import annotations

import pytest

from ddk_store.errors import ConfigError
from ddk_store.yamlio import read_yaml


def _file(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_merge_keys_are_not_duplicates_and_explicit_keys_override_them(tmp_path):
    path = _file(tmp_path, "base: &b {lr: 1.0, steps: 4}\nrun:\n  <<: *b\n  steps: 8\nother:\n  <<: [*b]\n")
    assert read_yaml(path, "--config") == {"base": {"lr": 1.0, "steps": 4}, "run": {"lr": 1.0, "steps": 8},
                                           "other": {"lr": 1.0, "steps": 4}}


def test_a_duplicate_key_is_named_with_its_1_based_line(tmp_path):
    path = _file(tmp_path, "lr: 1.0\nsteps: 4\nlr: 2.0\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "--config")
    assert str(e.value) == f"--config {path}: not valid YAML (found duplicate key 'lr', line 3)"


@pytest.mark.parametrize("text, says", [
    ("? [a, b]\n: 1\n", "unhashable"),  # a sequence as a mapping key
    ("when: 2024-13-01\n", "month must be in 1..12"),  # a date-like value that is no date
    ("[" * 800 + "]" * 800 + "\n", ""),  # nested too deeply for the parser's recursion
], ids=["sequence-as-key", "date-that-is-no-date", "nested-too-deeply"])
def test_a_malformed_document_is_one_config_error(tmp_path, text, says):
    path = _file(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^--corpora {path}: not valid YAML \\(.*{says}"):
        read_yaml(path, "--corpora")


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(ConfigError, match=f"^--config {tmp_path}: is a directory; give the YAML file itself$"):
        read_yaml(tmp_path, "--config")


def test_a_file_that_cannot_be_opened_says_why(tmp_path):
    """A link loop (as a file without read permission would, for a user other than root) is no missing file."""
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=f"^--config {tmp_path / 'a.yaml'}: cannot read it \\(.*symbolic links"):
        read_yaml(tmp_path / "a.yaml", "--config")
    with pytest.raises(ConfigError, match=f"^--config {tmp_path / 'none.yaml'}: file not found$"):
        read_yaml(tmp_path / "none.yaml", "--config")
