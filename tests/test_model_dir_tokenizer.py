"""A model directory saved without its tokenizer (``model.save_pretrained(d)`` but no ``tokenizer.save_pretrained(d)``):
teacher and student both say that the directory has no tokenizer files and how to save them, not transformers' own
error about backend tokenizers."""

from __future__ import annotations

import shutil

import pytest

from ddk_store.errors import ConfigError, StudentError
from ddk_testkit.models import build_tiny_teacher


@pytest.fixture(scope="module")
def no_tokenizer(tmp_path_factory):
    """The tiny Llama with its config and weights but none of its tokenizer files."""
    root = tmp_path_factory.mktemp("notok")
    model = root / "notok"
    shutil.copytree(build_tiny_teacher(root / "built"), model)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # (its only tokenizer files)
        (model / name).unlink()
    return model


def test_a_teacher_without_tokenizer_files_says_so_and_how_to_save_them(no_tokenizer):
    from stage1_teacher.teacher import load_tokenizer, resolve_teacher

    with pytest.raises(ConfigError) as e:
        load_tokenizer(resolve_teacher(str(no_tokenizer)))
    assert str(e.value) == (f"--teacher {no_tokenizer} has no tokenizer files (tokenizer.json / tokenizer_config.json "
                            f"...); save them beside the model with `tokenizer.save_pretrained(\"{no_tokenizer}\")`")


def test_a_student_without_tokenizer_files_says_so_and_how_to_save_them(no_tokenizer):
    from stage2_student.student import load_tokenizer, model_dir

    with pytest.raises(StudentError) as e:
        load_tokenizer(str(no_tokenizer), local_dir=model_dir("--student", str(no_tokenizer)))
    assert str(e.value) == (f"cannot load the student tokenizer: {no_tokenizer} has no tokenizer files "
                            f"(tokenizer.json / tokenizer_config.json ...); save them beside the model with "
                            f"`tokenizer.save_pretrained(\"{no_tokenizer}\")`")


def test_a_damaged_tokenizer_file_keeps_the_loaders_own_reason(no_tokenizer, tmp_path):
    from stage1_teacher.teacher import load_tokenizer, resolve_teacher

    bad = tmp_path / "bad"
    shutil.copytree(no_tokenizer, bad)
    (bad / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(ConfigError, match=r"cannot load its tokenizer \(JSONDecodeError"):
        load_tokenizer(resolve_teacher(str(bad)))
