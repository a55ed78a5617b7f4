"""Stage 2 of ddk: train a student from the teacher-logit store with DDK domain reweighting.

Imports ``ddk_store`` (never ``stage1_teacher``). ``train`` is imported lazily so that reading the config does not
pull in torch and transformers.
"""

from .config import Stage2Config

__all__ = ["Stage2Config", "train"]


def __getattr__(name: str):
    if name == "train":
        from .train import train

        return train
    raise AttributeError(name)
