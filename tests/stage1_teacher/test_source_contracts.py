"""More contracts of the `datasets` and Parquet sources (a thirteenth mutation campaign): what ``dataset:`` names
(a builder before a folder of that name, a URL, a hub id when gone files are allowed), the split read, the text
field checked, blank records dropped and documents counted, the hub probe (skipped offline, made before the hub
client's retries), and Parquet text as it is stored (large and view strings, dictionary-encoded bytes, every row
group, the named column wherever it stands) or damaged (two columns of the name, a damaged page: one line each).

Every test runs with the hub switched off (as in test_corpus_sources.py); the probe's tests point it at a closed
port on this machine."""

from __future__ import annotations

import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.corpus import ReadStats, check_dataset_source, load_corpora, read_documents
from stage1_teacher.dataset_source import is_on_hub

from .test_corpus import write_yaml
from .test_corpus_sources import jsonl, offline, project  # noqa: F401  (offline: no hub, for every test here)


def read(src) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    return list(read_documents(src, stats=stats)), stats


def closed_port() -> str:
    """An endpoint on this machine that refuses connections (a port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ------------------------------------------------------------------------------------------- what dataset: names
def test_a_builder_name_is_the_builder_even_beside_a_folder_of_that_name(tmp_path):
    y = project(tmp_path, "  web: {dataset: json, data_files: a.jsonl}\n")
    jsonl(y.parent / "json" / "train.jsonl", ["from the folder"])
    jsonl(y.parent / "a.jsonl", ["from the data file"])
    (src,) = load_corpora(y)
    assert src.dataset_dir is None and src.files == (str(y.parent / "a.jsonl"),) and not is_on_hub(src)


def test_a_url_or_a_hub_id_is_no_folder_even_where_gone_folders_are_allowed(tmp_path):
    """``missing_ok`` (a store whose rows are packed) keeps a gone folder written as a path; a hub id and a URL stay
    what they are."""
    y = project(tmp_path, "  hub: {dataset: org/name}\n  url: {dataset: 's3://bucket/corpus'}\n"
                          "  gone: {dataset: ./corpora/gone}\n")
    hub, url, gone = load_corpora(y, missing_ok=True)
    assert (hub.dataset_dir, url.dataset_dir) == (None, None) and is_on_hub(hub) and is_on_hub(url)
    assert gone.dataset_dir == str(y.parent / "corpora" / "gone")
    with pytest.raises(ConfigError, match=r"dataset directory './corpora/gone' .* does not exist"):
        load_corpora(y)


# --------------------------------------------------------------------------------------- reading a local dataset
def test_a_local_dataset_reads_its_split_drops_blank_records_and_counts_the_rest(tmp_path):
    y = project(tmp_path, "  web: {dataset: ./ds, split: test}\n  other: {dataset: ./ds, data_files: ds/train.jsonl}\n")
    jsonl(y.parent / "ds" / "train.jsonl", ["train one", "train two"])
    jsonl(y.parent / "ds" / "test.jsonl", ["test one", "   ", "\n", "test two"])
    test, train = load_corpora(y)
    docs, stats = read(test)
    assert docs == ["test one", "test two"] and stats.n_documents == 2
    assert read(train)[0] == ["train one", "train two"]


def test_a_dataset_without_its_text_field_fails_before_any_model_loads(tmp_path):
    y = project(tmp_path, "  web: {dataset: json, data_files: a.jsonl, text_field: body}\n")
    jsonl(y.parent / "a.jsonl", ["x", "y"], field="text")
    (src,) = load_corpora(y)
    with pytest.raises(ConfigError, match=r"domain 'web': dataset 'json' .* has no field 'body' \(fields: \['id', "
                                          r"'text'\]\); fix 'text_field'"):
        check_dataset_source(src)


def test_a_damaged_json_lines_file_read_through_datasets_is_one_line(tmp_path):
    """`datasets` streams lazily: a line cut short fails while the records are read, not when the dataset opens (it
    was a pyarrow traceback)."""
    y = project(tmp_path, "  web: {dataset: json, data_files: a.jsonl}\n")
    (y.parent / "a.jsonl").write_text('{"text": "fine"}\n{"text": "cut sh\n', encoding="utf-8")
    (src,) = load_corpora(y)
    for reader in (check_dataset_source, read):
        with pytest.raises(ConfigError, match=r"domain 'web': cannot read dataset 'json' .*JSON parse error.* \(a file "
                                              r"of it is damaged or not of the builder's format"):
            reader(src)


# ------------------------------------------------------------------------------------------------- the hub probe
def test_offline_mode_makes_no_probe_of_the_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (read a cached copy) must not be told the hub is unreachable and to set HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", closed_port())
    (src,) = load_corpora(project(tmp_path, "  wiki: {dataset: someorg/not-cached}\n"))
    with pytest.raises(ConfigError) as e:
        read(src)
    assert "cannot open dataset 'someorg/not-cached'" in str(e.value) and "unreachable" not in str(e.value)


def test_an_unreachable_hub_is_found_by_the_probe_in_seconds(tmp_path, monkeypatch):
    """The probe (a 5-s connect) speaks before the datasets library's own retries, which take minutes; the bound
    below is a hang guard, generous for a loaded machine, not a speed target."""
    from huggingface_hub import constants

    endpoint = closed_port()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    (src,) = load_corpora(project(tmp_path, "  wiki: {dataset: someorg/some-dataset, config: en}\n"))
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=f"domain 'wiki': cannot open dataset 'someorg/some-dataset' .*the hub at "
                                          f"{endpoint} is unreachable"):
        read(src)
    assert time.perf_counter() - t < 60


# ------------------------------------------------------------------------------------------------------ parquet
def parquet_domain(tmp_path, table: pa.Table, field: str = "text", **write) -> object:
    pq.write_table(table, tmp_path / "t.parquet", **write)
    (src,) = load_corpora(write_yaml(tmp_path, f"domains:\n  tab: {{paths: [t.parquet], format: parquet, "
                                               f"text_field: {field}}}\n"))
    return src


@pytest.mark.parametrize("kind", [pa.large_string(), pa.string_view(), pa.large_binary(), pa.binary_view()], ids=str)
def test_parquet_text_in_every_string_and_binary_layout(tmp_path, kind):
    src = parquet_domain(tmp_path, pa.table({"text": pa.array([b"one", b"  ", b"two"]).cast(kind)}))
    docs, stats = read(src)
    assert docs == ["one", "two"] and stats.n_documents == 2


def test_parquet_dictionary_encoded_bytes_are_decoded_row_by_row(tmp_path):
    column = pa.array([b"good", b"bad \xff", b"good"], pa.binary()).dictionary_encode()
    docs, stats = read(parquet_domain(tmp_path, pa.table({"text": column})))
    assert docs == ["good", "good"] and stats.skipped_where == [f"{tmp_path}/t.parquet: row 2"]


def test_parquet_every_row_group_is_read_in_order_from_the_named_column(tmp_path):
    table = pa.table({"id": [str(i) for i in range(7)], "text": [f"row {i}" for i in range(7)]})
    src = parquet_domain(tmp_path, table, row_group_size=2)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 4
    assert read(src)[0] == [f"row {i}" for i in range(7)]


def test_parquet_with_two_columns_of_the_text_field_is_one_line(tmp_path):
    """(pyarrow said the column did not exist, in a KeyError traceback.)"""
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    with pytest.raises(ConfigError, match=r"domain 'tab': .*t\.parquet: 2 columns are named 'text'"):
        read(parquet_domain(tmp_path, table))


def test_parquet_whose_pages_are_damaged_is_one_line(tmp_path):
    """The footer intact, the data pages overwritten: found only as a row group is read (it was an OSError
    traceback, with no file name for the command to print)."""
    src = parquet_domain(tmp_path, pa.table({"text": [f"row {i}" for i in range(100)]}))
    path = tmp_path / "t.parquet"
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4:-footer] = b"\xff" * (len(data) - footer - 4)
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"domain 'tab': .*t\.parquet: row group 1 of 1 is damaged \(.*\); write "
                                          r"the file again"):
        read(src)
