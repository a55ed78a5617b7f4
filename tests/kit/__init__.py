"""ddk's test kit: real processes, a real S3 server, tiny real models and stores, kill campaigns.

Installed as ``ddk_testkit`` (pyproject maps the name to this folder), so tests and bench/ import it by that name
and nothing puts the repository on ``sys.path``. Nothing here fakes a component under test. One module per concern:

- ``processes``: the repository root, child environments, spawning and reaping ``python -m`` children, and running a
  console script in-process as a shell would (``run_cli``);
- ``s3``: the one SeaweedFS S3 server launcher (loopback, restartable on the same port and data directory);
- ``models``: the tiny BPE tokenizer and random Llama models; ``stores``: tiny stores sharing a tokenizer's
  vocabulary; ``corpora``: the tiny three-domain corpus and its CORPORA.yaml;
- ``commands``: the argv of the tiny dumps and training runs every campaign uses;
- ``snapshots``: a store or a run reduced to what "identical" compares, and their differences;
- ``outages``: a storage outage faked where the store's objects are read (LocalStore.get);
- ``watch``: what a running dump or training run has on disk, read cheaply while it writes;
- ``kills``: kill moments, seeded schedules and kill-then-resume chains for dump and train;
- ``reference``: one uninterrupted reference dump, built once per process;
- ``bad_inputs``: the bad-input table of the three CLIs (cases, their workspace, the runner).
"""
