"""Initialise a distillation student from its teacher by keeping a subset of the teacher's decoder layers.

This is the usual way to start a student (DistilBERT-style layer selection): same tokenizer, same embeddings, same
final norm and output head, and every k-th transformer block, so the student starts close to the teacher instead of
from noise. It works for any Llama-style Hugging Face causal LM, that is one whose decoder keeps its blocks in an
``nn.ModuleList`` at ``<base_model_prefix>.layers`` (Llama, SmolLM2, Mistral, Qwen2/3, Gemma, Phi-3, ...).

    init_student_from_teacher("teacher/", "student/", layers=6)          # 6 evenly spaced layers, first and last kept
    init_student_from_teacher("teacher/", "student/", layers=[0, 10, 29])

Command line: ``ddk-student init --teacher DIR --layers 6 --out DIR``.

The student is written with ``save_pretrained`` (safetensors) plus the teacher's tokenizer and a small
``ddk-student-init.json`` recording where it came from. It is built in a temporary sibling directory and renamed into
place (:func:`ddk_store.paths.atomic_dir`), so ``out_dir`` never holds half a model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ddk_store.errors import ConfigError, DdkError, describe
from ddk_store.paths import atomic_dir

PROVENANCE = "ddk-student-init.json"
# Config attributes that hold one entry per decoder layer and must be subset with the layers.
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers", "swa_layers", "sliding_window_pattern_layers")


def evenly_spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """``num_student_layers`` indices spread evenly over ``range(num_teacher_layers)``, first and last included
    (only the first when keeping one layer). E.g. (30, 6) -> [0, 6, 12, 17, 23, 29]."""
    if isinstance(num_student_layers, bool) or not isinstance(num_student_layers, int):
        raise ConfigError(f"layers must be an int or a list of ints, got {num_student_layers!r}")
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ConfigError(
            f"--layers {num_student_layers}: the teacher has {num_teacher_layers} layers, so a student can keep "
            f"between 1 and {num_teacher_layers}"
        )
    if num_student_layers == 1:
        return [0]
    step = (num_teacher_layers - 1) / (num_student_layers - 1)
    return [int(round(i * step)) for i in range(num_student_layers)]


def resolve_layers(num_teacher_layers: int, layers: int | list[int] | tuple[int, ...] | str) -> list[int]:
    """Validate ``layers`` (a count, a list of indices, or a string "6" / "0,5,29" / "0-9,16-29", ranges inclusive)
    into sorted teacher indices."""
    if isinstance(layers, str):
        text = layers.strip()
        parts: list[int] = []
        for part in (p for p in re.split(r"[,\s]+", text) if p):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or (m[2] is not None and int(m[2]) < int(m[1])):
                raise ConfigError(f"--layers {layers!r}: expected a count like 6, indices like 0,6,12,29 or ranges "
                                  f"like 0-9,16-29 (first <= last); {part!r} is none of these")
            parts += range(int(m[1]), int(m[2] if m[2] is not None else m[1]) + 1)
        layers = parts[0] if len(parts) == 1 and not re.search(r"[,-]", text) else parts
    if isinstance(layers, int) and not isinstance(layers, bool):
        return evenly_spaced_layers(num_teacher_layers, layers)
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"--layers {layers!r}: expected a count like 6 or a non-empty list of layer indices")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_teacher_layers]
    if bad:
        raise ConfigError(
            f"--layers {list(layers)}: indices {bad} are not layers of the teacher, which has layers "
            f"0..{num_teacher_layers - 1}"
        )
    if len(set(layers)) != len(layers):
        raise ConfigError(f"--layers {list(layers)}: an index appears twice; each teacher layer can be kept once")
    if list(layers) != sorted(layers):
        raise ConfigError(f"--layers {list(layers)}: indices must be in increasing order (e.g. {sorted(layers)})")
    return list(layers)


def _decoder_layers(model, where: str):
    """(dotted name, ModuleList) of the model's decoder blocks, or a ConfigError explaining what is supported."""
    import torch.nn as nn

    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    layers = getattr(base, "layers", None) if base is not None else None
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or model.get_output_embeddings() is None:
        model_type = getattr(model.config, "model_type", "?")
        raise ConfigError(
            f"{where} is a {type(model).__name__} (model_type {model_type!r}), not a Llama-style decoder: "
            f"init_student needs a causal LM whose blocks are an nn.ModuleList at model.layers and an output head "
            f"(Llama, SmolLM2, Mistral, Qwen2, ...); build this student another way"
        )
    return f"{prefix}.layers", layers


def _subset_config(config, keep: list[int], n_teacher: int) -> list[str]:
    """Set num_hidden_layers and subset per-layer config lists; return the names of the lists changed."""
    changed = []
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == n_teacher:
            setattr(config, key, type(value)(value[i] for i in keep))
            changed.append(key)
    config.num_hidden_layers = len(keep)
    return changed


def _load_from(auto_class, teacher_dir: Path, problem: str, **kw):
    """``auto_class.from_pretrained(teacher_dir, **kw)`` without remote code; a failure is ``problem`` (a template
    with ``{teacher}`` and ``{err}``) as a ConfigError."""
    try:
        return auto_class.from_pretrained(str(teacher_dir), trust_remote_code=False, **kw)
    except (OSError, ValueError) as err:
        raise ConfigError(problem.format(teacher=teacher_dir, err=describe(err))) from None


def init_student_from_teacher(
    teacher_dir: str | Path,
    out_dir: str | Path,
    *,
    layers: int | list[int],
    seed: int = 0,
    dtype=None,
    overwrite: bool = False,
) -> Path:
    """Build a student from the Llama-style HF teacher in ``teacher_dir`` by keeping the decoder ``layers``
    (a count, evenly spaced with the first and last kept, or a list of teacher layer indices) and save it to
    ``out_dir`` with the teacher's tokenizer. Returns ``out_dir``.

    Embeddings, final norm and output head are copied; ``config.num_hidden_layers`` (and ``layer_types`` if
    present) are updated. ``seed`` seeds torch before the student is built (nothing is randomly initialised when the
    teacher is Llama-style, but it makes the build reproducible regardless). ``dtype`` (e.g. ``torch.float32``)
    defaults to the teacher's stored dtype. An existing non-empty ``out_dir`` is refused unless ``overwrite`` is given
    and it holds a student this function wrote (its provenance file); one that is or holds the teacher, always.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    teacher_dir = Path(teacher_dir).expanduser()
    out = Path(out_dir).expanduser().absolute()
    if not (teacher_dir / "config.json").is_file():
        raise ConfigError(
            f"teacher {teacher_dir} is not a Hugging Face model directory (no config.json there); "
            "pass the directory written by save_pretrained (e.g. the built-in teacher from "
            "`ddk-teacher builtin-teacher`)"
        )
    if teacher_dir.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"student output {out} is or holds the teacher directory {teacher_dir}; choose another --out")
    if out.resolve().is_relative_to(teacher_dir.resolve()):  # (== is refused above)
        raise ConfigError(f"student output {out} is inside the teacher directory {teacher_dir} (a model directory, "
                          f"often shared, that ddk never writes into); choose an --out outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(f"student output {out} already exists and is not empty; choose another --out, or pass "
                              "--overwrite to replace a student that `ddk-student init` wrote there")
        if not (out / PROVENANCE).is_file():
            # --overwrite replaces what this command wrote, never a directory of something else (a run, a model).
            raise ConfigError(f"student output {out} is not a student written by `ddk-student init` (no {PROVENANCE} "
                              "there), so --overwrite does not replace it; choose another --out or remove it yourself")
        if added := _added_files(out):
            raise ConfigError(f"student output {out}: --overwrite replaces only the student `ddk-student init` wrote, "
                              f"and it also holds {', '.join(added[:5])}{' ...' if len(added) > 5 else ''}; move them "
                              f"out or choose another --out")

    tokenizer = _load_from(AutoTokenizer, teacher_dir, "teacher {teacher} has no loadable tokenizer ({err}); the "
                           "student must share the teacher's tokenizer, so save it into the teacher directory first")
    config = _load_from(AutoConfig, teacher_dir, "teacher {teacher}: cannot read its config ({err}); `ddk-student "
                        "init` never runs a model's own code, so a teacher that needs custom code (auto_map) is not "
                        "supported here")
    n_config = getattr(config, "num_hidden_layers", None)
    if isinstance(n_config, int) and n_config > 0:
        resolve_layers(n_config, layers)  # bad choices fail before the weights are loaded
    teacher = _load_from(AutoModelForCausalLM, teacher_dir, "teacher {teacher}: cannot load its weights ({err}); "
                         "pass the complete directory save_pretrained wrote (config, weights and tokenizer)",
                         dtype=dtype if dtype is not None else "auto")
    layers_name, teacher_layers = _decoder_layers(teacher, str(teacher_dir))
    n_teacher = len(teacher_layers)
    keep = resolve_layers(n_teacher, layers)

    changed = _subset_config(config, keep, n_teacher)
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype, trust_remote_code=False)
    _decoder_layers(student, f"the student built from {teacher_dir}")

    # Map teacher keys to student keys: layer `keep[j]` becomes layer `j`; everything outside the layers is shared.
    layer_key = re.compile(rf"^{re.escape(layers_name)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        m = layer_key.match(key)
        if m is None:
            state[key] = tensor
        elif int(m.group(1)) in new_index:
            state[f"{layers_name}.{new_index[int(m.group(1))]}.{m.group(2)}"] = tensor
    result = student.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise DdkError(
            f"building a student from {teacher_dir}: its weights do not map onto a {len(keep)}-layer "
            f"{type(student).__name__} (missing {missing[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}); "
            "this architecture needs a dedicated initialiser"
        )
    if tied:
        student.tie_weights()
    student.generation_config = teacher.generation_config
    student.eval()
    n_params = sum(p.numel() for p in student.parameters())
    n_teacher_params = sum(p.numel() for p in teacher.parameters())
    del teacher, state

    with atomic_dir(out, owner_file=PROVENANCE) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "teacher": str(teacher_dir.resolve()),
            "teacher_layers": n_teacher,
            "kept_layers": keep,
            "per_layer_config_subset": changed,
            "seed": seed,
            "parameters": n_params,
            "teacher_parameters": n_teacher_params,
            "files": sorted([p.name for p in tmp.iterdir()] + [PROVENANCE]),
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _added_files(out: Path) -> list[str]:
    """Entries of student directory ``out`` that ``init`` did not write (its provenance lists what it wrote; one
    written before the list was kept counts as all its own)."""
    try:
        written = json.loads((out / PROVENANCE).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        written = None
    if not isinstance(written, list):
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in written)


def describe_student(out_dir: str | Path) -> str:
    """One line on a student built by :func:`init_student_from_teacher`, from its provenance file (what
    ``ddk-student init`` prints)."""
    out = Path(out_dir)
    info = json.loads((out / PROVENANCE).read_text())
    return f"{out}: kept layers {info['kept_layers']} of {info['teacher_layers']}, {info['parameters']:,} parameters"
