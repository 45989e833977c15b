"""llmnb-prepro's datasets (fineweb, edu_fineweb, tinystories, hellaswag) on small local inputs in
each dataset's own format, against the bytes that llm.c's dev/data scripts write.

The llm.c side is written again here from the scripts themselves (fineweb.py's shard loop,
tinystories.py's process_shard and split order, hellaswag.py's render_example and
data_common.py's write_datafile / write_evalfile), line by line, separately from llmnb's code,
so that a mistake in one is not copied into the other. Every test is offline.
"""
import io
import json
import os
import random
import tarfile

import numpy as np
import pytest

from llmnb import formats, hellaswag, prepro

# ----------------------------------------------------------------------------
# llm.c's scripts, again


def llmc_datafile(toks):
    """data_common.py's write_datafile(filename, toks, "gpt-2"), as bytes."""
    assert len(toks) < 2**31
    header = np.zeros(256, dtype=np.int32)
    header[0] = 20240520
    header[1] = 1
    header[2] = len(toks)
    return header.tobytes() + np.array(toks, dtype=np.uint16).tobytes()


def llmc_tokenize_gpt2(enc, text):
    """fineweb.py's tokenize_gpt2(doc)."""
    eot = enc._special_tokens["<|endoftext|>"]
    tokens = [eot]
    tokens.extend(enc.encode_ordinary(text))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all()
    return tokens_np.astype(np.uint16)


def llmc_fineweb(enc, texts, shard_size, name):
    """fineweb.py's main loop over the documents in order (pool.imap keeps it) -> {file name:
    bytes}. Like the script, it needs every document shorter than a shard."""
    files = {}
    shard_index = 0
    all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
    token_count = 0
    for text in texts:
        tokens = llmc_tokenize_gpt2(enc, text)
        if token_count + len(tokens) < shard_size:
            all_tokens_np[token_count:token_count + len(tokens)] = tokens
            token_count += len(tokens)
        else:
            split = "val" if shard_index == 0 else "train"
            filename = f"{name}_{split}_{shard_index:06d}.bin"
            remainder = shard_size - token_count
            all_tokens_np[token_count:token_count + remainder] = tokens[:remainder]
            files[filename] = llmc_datafile(all_tokens_np.tolist())
            shard_index += 1
            all_tokens_np[0:len(tokens) - remainder] = tokens[remainder:]
            token_count = len(tokens) - remainder
    if token_count != 0:
        split = "val" if shard_index == 0 else "train"
        filename = f"{name}_{split}_{shard_index:06d}.bin"
        files[filename] = llmc_datafile(all_tokens_np[:token_count].tolist())
    return files


def llmc_tinystories(enc, split_files):
    """tinystories.py's tokenize(): the first json file is val, the rest train, each file's
    stories shuffled by Random(1337 + its index in the split), stripped, EOT first -> {file: bytes}.
    (The script joins a split's files in the order its workers finish; here, in turn.)"""
    eot = enc._special_tokens["<|endoftext|>"]
    out = {}
    for split_name, shards in (("val", split_files[:1]), ("train", split_files[1:])):
        all_tokens = []
        for shard_index, data in enumerate(shards):
            data = list(data)
            rng = random.Random(1337 + shard_index)
            rng.shuffle(data)
            for example in data:
                text = example["story"].strip()
                all_tokens.append(eot)
                all_tokens.extend(enc.encode_ordinary(text))
        out[f"TinyStories_{split_name}.bin"] = llmc_datafile(all_tokens)
    return out


def llmc_evalfile(enc, examples):
    """hellaswag.py's render_example (its "data") and data_common.py's write_evalfile, as bytes."""
    datas = []
    for example in examples:
        ctx_tokens = enc.encode(example["ctx"])
        datas.append({"label": example["label"], "ctx_tokens": ctx_tokens,
                      "ending_tokens": [enc.encode(" " + end) for end in example["endings"]]})
    header = np.zeros(256, dtype=np.int32)
    header[0] = 20240522
    header[1] = 1
    header[2] = len(datas)
    longest_example_bytes = 0
    full_stream = []
    for idx, data in enumerate(datas):
        stream = [2**16 - 1, 0, idx, data["label"], len(data["ending_tokens"])]
        stream.append(len(data["ctx_tokens"]))
        stream.extend(data["ctx_tokens"])
        for end_tokens in data["ending_tokens"]:
            stream.append(len(end_tokens))
            stream.extend(end_tokens)
        nbytes = len(stream) * 2
        stream[1] = nbytes
        longest_example_bytes = max(longest_example_bytes, nbytes)
        full_stream.extend(stream)
    header[3] = longest_example_bytes
    return header.tobytes() + np.array(full_stream, dtype=np.uint16).tobytes()


# ----------------------------------------------------------------------------
# inputs


@pytest.fixture(scope="module")
def enc():
    tiktoken = pytest.importorskip("tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # its files cannot be fetched offline
        pytest.skip(f"tiktoken's gpt2 encoding unavailable: {e}")


WORDS = ["the", "cat", "über", "naïve", "日本語", "emoji 🙂", "<|endoftext|>", "\n", "\n\n", "  ",
         "1234", "don't", "e.g.", "\t", "Ω", "zebra"]


def random_texts(n, seed=0):
    """Documents of 0 to ~40 tokens: unicode, newlines, runs of spaces, an empty one, and the EOT's
    own text (which encode_ordinary takes as plain text)."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice(WORDS) + rng.choice(["", " ", ", "]) for _ in range(rng.randrange(30)))
             for _ in range(n)]
    texts[min(3, n - 1)] = ""
    return texts


def write_parquet(path, texts, row_group_size=7):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"text": texts, "id": [f"<urn:{i}>" for i in range(len(texts))],
                      "token_count": [len(t) for t in texts]})
    pq.write_table(table, path, row_group_size=row_group_size)


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": i}) + "\n")


def bins(directory):
    """{file name: bytes} of the .bin files in a folder."""
    return {p: open(os.path.join(directory, p), "rb").read()
            for p in sorted(os.listdir(directory)) if p.endswith(".bin")}


def one_error_line(capsys):
    """The error, one line, last on stderr (after any progress bar); no traceback."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("llmnb-prepro: error: ") and err.count("llmnb-prepro") == 1
    assert "Traceback" not in err
    return last


def fineweb(tmp_path, source, *extra):
    return prepro.main(["fineweb", "--source", str(source), "--data-dir", str(tmp_path / "data"),
                        *extra])


# ----------------------------------------------------------------------------
# fineweb


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_fineweb_shards_are_llmc_bytes(enc, tmp_path, capsys, fmt):
    texts = random_texts(120)
    src = tmp_path / "src"
    src.mkdir()
    # two files, the second made first: they are read in name order, as datasets reads them
    write = write_parquet if fmt == "parquet" else write_jsonl
    write(src / f"001_00000.{fmt}", texts[70:])
    write(src / f"000_00000.{fmt}", texts[:70])
    assert fineweb(tmp_path, src, "--shard-size", "97", "--workers", "1") == 0
    got = bins(tmp_path / "data" / "fineweb10B")
    want = llmc_fineweb(enc, texts, 97, "fineweb")
    assert len(want) > 5 and got.keys() == want.keys() and got == want
    assert "fineweb_val_000000.bin" in got
    out, err = capsys.readouterr()
    assert "writing 97 tokens to" in out and "(1,218 bytes) in the gpt-2 format" in out
    assert "100%" in err and "120/120" in err  # the progress bar, in documents
    assert formats.read_tokenizer(tmp_path / "data" / "gpt2_tokenizer.bin")[1] == 50256


def test_fineweb_shard_ending_with_a_document(enc, tmp_path):
    """A shard that a document fills exactly: written then, the next document opens the next
    shard, and no empty shard at the end."""
    texts = random_texts(40, seed=1)
    write_jsonl(tmp_path / "docs.jsonl", texts)
    lengths = [len(llmc_tokenize_gpt2(enc, t)) for t in texts]
    shard_size = sum(lengths[:5])
    assert shard_size > max(lengths)
    assert fineweb(tmp_path, tmp_path / "docs.jsonl", "--shard-size", str(shard_size)) == 0
    got = bins(tmp_path / "data" / "fineweb10B")
    assert got == llmc_fineweb(enc, texts, shard_size, "fineweb")
    first = formats.read_shard(tmp_path / "data" / "fineweb10B" / "fineweb_train_000001.bin")
    assert first[0] == 50256  # document 5 starts shard 1
    # every document in one shard: shard 0 (val) only, the remainder
    assert prepro.main(["fineweb", "--source", str(tmp_path / "docs.jsonl"), "--data-dir",
                        str(tmp_path / "one"), "--shard-size", str(10**6)]) == 0
    assert list(bins(tmp_path / "one" / "fineweb10B")) == ["fineweb_val_000000.bin"]


def test_fineweb_parallel_is_single_process(enc, tmp_path):
    texts = random_texts(300, seed=2)
    write_parquet(tmp_path / "docs.parquet", texts, row_group_size=13)
    for workers in (1, 2):
        assert prepro.main(["fineweb", "--source", str(tmp_path / "docs.parquet"), "--data-dir",
                            str(tmp_path / f"w{workers}"), "--shard-size", "211",
                            "--workers", str(workers)]) == 0
    one, two = bins(tmp_path / "w1" / "fineweb10B"), bins(tmp_path / "w2" / "fineweb10B")
    assert len(one) > 10 and one == two == llmc_fineweb(enc, texts, 211, "fineweb")


def test_fineweb_documents_longer_than_a_shard(enc, tmp_path):
    """llm.c's loop needs a document shorter than a shard (else numpy refuses the leftover);
    llmnb carries it over as many shards as it takes: the stream is the same, cut every N."""
    texts = ["a long document " * 20, "x", "", "and another long one, " * 9]
    write_jsonl(tmp_path / "docs.jsonl", texts)
    assert fineweb(tmp_path, tmp_path / "docs.jsonl", "--shard-size", "7") == 0
    files = bins(tmp_path / "data" / "fineweb10B")
    shards = [files[f] for f in sorted(files, key=lambda f: f[-10:])]  # by shard number
    stream = np.concatenate([llmc_tokenize_gpt2(enc, t) for t in texts])
    assert len(shards) == -(-len(stream) // 7)
    for i, data in enumerate(shards):
        assert data == llmc_datafile(stream[7 * i: 7 * i + 7].tolist())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_fineweb_resumes_after_an_interruption(enc, tmp_path, monkeypatch, capsys, fmt):
    texts = random_texts(200, seed=3)
    if fmt == "parquet":  # row groups of 11: the restart skips whole groups, then rows of one
        write_parquet(tmp_path / "docs.parquet", texts, row_group_size=11)
    else:  # two files: the restart skips the first, then lines of the second
        write_jsonl(tmp_path / "a.jsonl", texts[:40])
        write_jsonl(tmp_path / "b.jsonl", texts[40:])
    source = tmp_path / ("docs.parquet" if fmt == "parquet" else "")
    want = llmc_fineweb(enc, texts, 101, "fineweb")
    out_dir = tmp_path / "data" / "fineweb10B"
    tokenize = prepro.tokenize_document
    seen = []

    def stopped_at_130(text):  # Ctrl-C while document 130 is tokenized
        if len(seen) == 130:
            raise KeyboardInterrupt
        seen.append(text)
        return tokenize(text)
    monkeypatch.setattr(prepro, "tokenize_document", stopped_at_130)
    assert fineweb(tmp_path, source, "--shard-size", "101", "--workers", "1") == 130
    assert "the same command goes on" in capsys.readouterr().err
    done = bins(out_dir)
    # only complete shards (no temporary files), each already what llm.c writes
    assert 0 < len(done) < len(want) and all(want[f] == data for f, data in done.items())
    assert sorted(os.listdir(out_dir)) == sorted(done) + [prepro.PROGRESS_FILENAME]
    mtimes = {f: os.stat(out_dir / f).st_mtime_ns for f in done}

    # again: the shards there are kept, and tokenizing starts at the document the last one ended in
    # (and the temporary file of a write that a kill -9 cut short is removed)
    (out_dir / ".fineweb_train_000009.bin.0123456789ab.tmp").write_bytes(b"half a shard")
    seen.clear()

    def counted(text):
        seen.append(text)
        return tokenize(text)
    monkeypatch.setattr(prepro, "tokenize_document", counted)
    assert fineweb(tmp_path, source, "--shard-size", "101", "--workers", "1") == 0
    out = capsys.readouterr().out
    assert f"{len(done)} shards already written" in out and "removed 1 temporary file" in out
    assert bins(out_dir) == want
    assert sorted(os.listdir(out_dir)) == sorted(want) + [prepro.PROGRESS_FILENAME]
    assert {f: os.stat(out_dir / f).st_mtime_ns for f in done} == mtimes
    restart = json.loads((out_dir / prepro.PROGRESS_FILENAME).read_text())["shards"][len(done) - 1][0]
    assert seen == texts[restart:] and 40 < restart < 130

    # all there: nothing is tokenized; a shard lost: written again, from it on
    seen.clear()
    assert fineweb(tmp_path, source, "--shard-size", "101") == 0
    assert seen == [] and "already written, skipping" in capsys.readouterr().out
    (out_dir / "fineweb_train_000003.bin").unlink()
    assert fineweb(tmp_path, source, "--shard-size", "101") == 0
    assert "fineweb_train_000003.bin is missing" in capsys.readouterr().out
    assert bins(out_dir) == want and os.stat(out_dir / "fineweb_val_000000.bin").st_mtime_ns == \
        mtimes["fineweb_val_000000.bin"]

    # another shard size on the same folder: refused, not mixed
    assert fineweb(tmp_path, source, "--shard-size", "50") == 1
    assert "shard size 101: pass the same, or remove" in one_error_line(capsys)
    assert bins(out_dir) == want


def test_fineweb_from_the_hub_through_datasets(enc, tmp_path, monkeypatch):
    """Without --source: datasets.load_dataset(HuggingFaceFW/..., name=sample-..., split=train),
    here answered by datasets' own parquet loader over local files."""
    datasets = pytest.importorskip("datasets")
    texts = random_texts(90, seed=4)
    for i in range(3):
        write_parquet(tmp_path / f"00{i}_00000.parquet", texts[30 * i: 30 * i + 30])
    real = datasets.load_dataset
    asked = []

    def load_dataset(repo, name, split):
        asked.append((repo, name, split))
        files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
        return real("parquet", data_files=files, split=split, cache_dir=str(tmp_path / "hf"))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    for workers in ("1", "2"):
        assert prepro.main(["edu_fineweb", "--sample", "100B", "--data-dir", str(tmp_path / workers),
                            "--shard-size", "89", "--workers", workers]) == 0
        got = bins(tmp_path / workers / "edu_fineweb100B")
        assert got == llmc_fineweb(enc, texts, 89, "edu_fineweb")
    assert asked == [("HuggingFaceFW/fineweb-edu", "sample-100BT", "train")] * 2
    # resuming reads the dataset from the document where the last shard ended
    progress = tmp_path / "1" / "edu_fineweb100B" / prepro.PROGRESS_FILENAME
    (tmp_path / "1" / "edu_fineweb100B" / "edu_fineweb_train_000004.bin").unlink()
    assert prepro.main(["edu_fineweb", "--sample", "100B", "--data-dir", str(tmp_path / "1"),
                        "--shard-size", "89"]) == 0
    assert bins(tmp_path / "1" / "edu_fineweb100B") == llmc_fineweb(enc, texts, 89, "edu_fineweb")
    assert json.loads(progress.read_text())["done"]


def test_fineweb_without_datasets_says_what_to_install(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_datasets(name, *args, **kw):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert prepro.main(["fineweb", "--data-dir", str(tmp_path)]) == 1
    assert "pip install 'llmnb[data]'" in one_error_line(capsys)


def test_fineweb_bad_sources_are_one_line(enc, tmp_path, capsys):
    assert fineweb(tmp_path, tmp_path / "nope.parquet") == 1
    assert "nope.parquet: no such file" in one_error_line(capsys)
    (tmp_path / "docs.csv").write_text("text\nhello\n")
    assert fineweb(tmp_path, tmp_path / "docs.csv") == 1
    assert "docs.csv: not a .parquet or .jsonl file" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert fineweb(tmp_path, tmp_path / "empty") == 1
    assert "empty: no .parquet or .jsonl files in it" in one_error_line(capsys)
    # a bad line far into a jsonl, met by the process that feeds the workers
    texts = random_texts(80)
    write_jsonl(tmp_path / "bad.jsonl", texts)
    with open(tmp_path / "bad.jsonl", "a") as f:
        f.write('{"txt": "no text key"}\n')
    for workers in ("1", "2"):
        assert fineweb(tmp_path, tmp_path / "bad.jsonl", "--workers", workers) == 1
        assert "bad.jsonl:81: not a JSON object with a \"text\" string" in one_error_line(capsys)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    assert fineweb(tmp_path, tmp_path / "latin1.jsonl") == 1
    assert "latin1.jsonl: not UTF-8" in one_error_line(capsys)


def test_fineweb_bad_parquet_is_one_line(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    assert fineweb(tmp_path, tmp_path / "junk.parquet") == 1
    assert "junk.parquet: not a parquet file" in one_error_line(capsys)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "other.parquet")
    assert fineweb(tmp_path, tmp_path / "other.parquet") == 1
    assert "other.parquet: no \"text\" column (its columns: content)" in one_error_line(capsys)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    assert fineweb(tmp_path, tmp_path / "ints.parquet") == 1
    assert "ints.parquet: its \"text\" column holds int64, not strings" in one_error_line(capsys)


# ----------------------------------------------------------------------------
# tinystories


def stories_json(n, seed):
    rng = random.Random(seed)
    texts = random_texts(n, seed)
    return [{"story": rng.choice(["", "  ", "\n"]) + t + rng.choice(["", "\n", " \n "]),
             "instruction": {"words": ["x"]}, "summary": "s", "source": "GPT-4"} for t in texts]


def write_tinystories_tar(path, files):
    """A tar.gz like TinyStories_all_data.tar.gz: json files at the top (plus what llm.c's glob
    of *.json would not find)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [*files.items(), ("README.txt", "not a story"),
                           ("nested/data99.json", [{"story": "unseen"}])]:
            raw = (data if isinstance(data, str) else json.dumps(data)).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_tinystories_is_llmc_bytes(enc, tmp_path, capsys):
    files = {f"data{i:02d}.json": stories_json(25 + i, seed=10 + i) for i in (3, 0, 2, 1)}
    write_tinystories_tar(tmp_path / "TinyStories_all_data.tar.gz", files)
    want = llmc_tinystories(enc, [files[k] for k in sorted(files)])
    assert prepro.main(["tinystories", "--source", str(tmp_path / "TinyStories_all_data.tar.gz"),
                        "--data-dir", str(tmp_path / "data"), "--workers", "2"]) == 0
    out_dir = tmp_path / "data" / "tinystories"
    assert bins(out_dir) == want
    assert sorted(os.listdir(out_dir / "TinyStories_all_data")) == sorted(files)
    out, err = capsys.readouterr()
    assert "number of shards: 4" in out and "TinyStories_train.bin" in out
    assert "100%" in err
    # a second run keeps what is there
    mtime = os.stat(out_dir / "TinyStories_train.bin").st_mtime_ns
    assert prepro.main(["tinystories", "--data-dir", str(tmp_path / "data")]) == 0
    assert "already exists, skipping" in capsys.readouterr().out
    assert os.stat(out_dir / "TinyStories_train.bin").st_mtime_ns == mtime
    # a folder of the json files gives the same, one process or two
    assert prepro.main(["tinystories", "--source", str(out_dir / "TinyStories_all_data"),
                        "--data-dir", str(tmp_path / "again"), "--workers", "1"]) == 0
    assert bins(tmp_path / "again" / "tinystories") == want


def test_tinystories_bad_inputs_are_one_line(enc, tmp_path, capsys):
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    assert prepro.main(["tinystories", "--source", str(tmp_path / "junk.tar.gz"),
                        "--data-dir", str(tmp_path / "data")]) == 1
    assert "junk.tar.gz: not a readable tar.gz archive" in one_error_line(capsys)
    write_tinystories_tar(tmp_path / "full.tar.gz", {"data00.json": stories_json(400, 0)})
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "full.tar.gz").read_bytes()[:3000])
    assert prepro.main(["tinystories", "--source", str(tmp_path / "cut.tar.gz"),
                        "--data-dir", str(tmp_path / "data")]) == 1
    assert "cut.tar.gz: not a readable tar.gz archive" in one_error_line(capsys)
    assert not (tmp_path / "data" / "tinystories" / "TinyStories_all_data").exists()
    d = tmp_path / "stories"
    d.mkdir()
    (d / "data00.json").write_text(json.dumps(stories_json(3, 0)))
    assert prepro.main(["tinystories", "--source", str(d), "--data-dir", str(tmp_path / "data")]) == 1
    assert "1 json files; TinyStories needs two or more" in one_error_line(capsys)
    (d / "data01.json").write_text(json.dumps([{"text": "no story key"}]))
    assert prepro.main(["tinystories", "--source", str(d), "--data-dir", str(tmp_path / "data")]) == 1
    assert "data01.json: not a TinyStories file" in one_error_line(capsys)
    assert not (tmp_path / "data" / "tinystories" / "TinyStories_train.bin").exists()


# ----------------------------------------------------------------------------
# hellaswag

HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx": "A man is sitting on a roof. he",
     "label": 3, "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                             "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ind": 92, "ctx": "Über naïve café: 日本語 [header] How to", "label": 0,
     "endings": ["be kind 🙂", "", "  two spaces", "new\nline"]},
    {"ind": 106, "ctx": "x", "label": 2, "endings": ["a", "b", "c", "d"]},
]


def test_hellaswag_files_are_llmc_bytes(enc, tmp_path, capsys):
    src = tmp_path / "hs.jsonl"
    src.write_text("".join(json.dumps(ex) + "\n" for ex in HELLASWAG), encoding="utf-8")
    assert prepro.main(["hellaswag", "--source", str(src), "--data-dir", str(tmp_path / "data")]) == 0
    d = tmp_path / "data" / "hellaswag"
    assert (d / "hellaswag_val.bin").read_bytes() == llmc_evalfile(enc, HELLASWAG)
    assert (d / "hellaswag_val.jsonl").read_bytes() == src.read_bytes()
    assert "writing 3 examples to" in capsys.readouterr().out
    # where llmnb-eval hellaswag reads it: found, not downloaded again
    assert hellaswag.val_file(str(tmp_path / "data")) == str(d / "hellaswag_val.jsonl")
    # without --source the file there is used (a dead URL proves nothing is downloaded)
    (d / "hellaswag_val.bin").unlink()
    assert prepro.main(["hellaswag", "--data-dir", str(tmp_path / "data")]) == 0
    assert (d / "hellaswag_val.bin").read_bytes() == llmc_evalfile(enc, HELLASWAG)


def test_hellaswag_errors_are_one_line(enc, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "c", "endings": ["a", "b"], "label": 0}) + "\n")
    good = tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(HELLASWAG[0]) + "\n")
    assert prepro.main(["hellaswag", "--source", str(bad), "--data-dir", str(tmp_path / "data")]) == 1
    assert "bad.jsonl:1: not a HellaSwag example" in one_error_line(capsys)
    assert good.read_text() == json.dumps(HELLASWAG[0]) + "\n"  # not replaced by the bad one
    monkeypatch.setattr(hellaswag, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    assert prepro.main(["hellaswag", "--data-dir", str(tmp_path / "other")]) == 1
    assert "127.0.0.1:9" in one_error_line(capsys)


# ----------------------------------------------------------------------------
# the command line, and --input


def test_options_go_with_their_datasets(tmp_path, capsys):
    for argv, says in [(["tinyshakespeare", "--shard-size", "5"], "--shard-size goes with fineweb"),
                       (["tinystories", "--sample", "100B"], "--sample goes with fineweb"),
                       (["hellaswag", "--workers", "2"], "--workers goes with fineweb"),
                       (["fineweb", "--val-tokens", "5"], "--val-tokens goes with --input"),
                       (["--input", "x.txt", "--source", "y"], "--source goes with tinyshakespeare"),
                       (["fineweb", "--workers", "0"], "--workers must be at least 1"),
                       ([], "give either a dataset")]:
        with pytest.raises(SystemExit) as e:
            prepro.main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_input_too_short_for_the_val_split(enc, tmp_path, capsys):
    """Issue 27: a text of fewer tokens than --val-tokens: one line naming its token count and
    --val-tokens, and no folder left behind."""
    src = tmp_path / "notes.txt"
    src.write_text("A short note.\n\nAnother paragraph of it.\n", encoding="utf-8")
    n = len(prepro.tokenize_text(src.read_text()))
    assert prepro.main(["--input", str(src), "--data-dir", str(tmp_path / "data")]) == 1
    err = one_error_line(capsys)
    assert f"{n:,} tokens" in err and "32,768" in err and f"--val-tokens {max(1, n // 10)}" in err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    # the hint works
    assert prepro.main(["--input", str(src), "--data-dir", str(tmp_path / "data"),
                        "--val-tokens", str(max(1, n // 10))]) == 0
    assert len(formats.read_shard(tmp_path / "data" / "notes" / "notes_val.bin")) == max(1, n // 10)
