"""Token datasets in the object store and the synthetic induction task."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from workers.cache import LocalCache
from workers.datasets import (DatasetError, check_fits_model, induction_sequences, load_token_dataset,
                              write_token_dataset)
from workers.objectstore import open_store


@pytest.fixture(params=["s3", "file"])
def prefix(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/datasets/d1"
    return (tmp_path / "objects" / "datasets" / "d1").as_uri()


def test_round_trip(prefix: str, tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 300, size=(10, 7))
    header = write_token_dataset(prefix, tokens, vocab_size=300)
    assert (header.dtype, header.seq_len, header.num_sequences) == ("uint16", 7, 10)
    stored = json.loads(open_store(prefix).get_bytes("header.json"))
    assert stored == {"dtype": "uint16", "vocab_size": 300, "seq_len": 7, "num_sequences": 10}
    assert len(open_store(prefix).get_bytes("tokens.bin")) == 10 * 7 * 2

    for cache in (None, LocalCache(tmp_path / "cache")):
        ds = load_token_dataset(prefix, cache=cache)
        assert len(ds) == 10 and ds.seq_len == 7 and ds.vocab_size == 300
        assert ds.tokens.dtype == torch.int64 and ds.tokens.shape == (10, 7)
        assert np.array_equal(ds.tokens.numpy(), tokens)
        assert ds[3].dtype == torch.int64 and torch.equal(ds[3], torch.as_tensor(tokens[3]))
        (batch,) = list(DataLoader(ds, batch_size=10))
        assert batch.shape == (10, 7)
    assert len(load_token_dataset(prefix, max_sequences=4)) == 4


def test_memo_is_keyed_by_content(tmp_path: Path) -> None:
    prefix = (tmp_path / "objects" / "memo").as_uri()
    write_token_dataset(prefix, np.zeros((4, 3), dtype=np.int64), vocab_size=8)
    first = load_token_dataset(prefix, memo=True)
    assert load_token_dataset(prefix, memo=True) is first
    write_token_dataset(prefix, np.ones((4, 3), dtype=np.int64), vocab_size=8)
    second = load_token_dataset(prefix, memo=True)
    assert second is not first and int(second.tokens.sum()) == 12


def test_missing_and_corrupt_datasets_are_clear(s3_bucket: str) -> None:
    prefix = f"s3://{s3_bucket}/datasets/bad"
    with pytest.raises(DatasetError, match=rf"no token dataset at {prefix} \(missing header.json and tokens.bin\)"):
        load_token_dataset(prefix)
    store = open_store(prefix)
    store.put_bytes("tokens.bin", bytes(30))
    store.put_bytes("header.json", b"not json")
    with pytest.raises(DatasetError, match=rf"header {prefix}/header.json is not JSON"):
        load_token_dataset(prefix)
    store.put_bytes("header.json", json.dumps({"dtype": "uint8", "vocab_size": 4, "seq_len": 8,
                                               "num_sequences": 4}).encode())
    with pytest.raises(DatasetError, match="has 30 bytes but its header promises 32"):
        load_token_dataset(prefix)
    store.put_bytes("tokens.bin", bytes([9]) * 32)
    with pytest.raises(DatasetError, match="token ids outside its vocab_size 4"):
        load_token_dataset(prefix)
    with pytest.raises(DatasetError, match="bucket 'llc-no-such-data' .* does not exist"):
        load_token_dataset("s3://llc-no-such-data/d")


def test_vocab_larger_than_model_is_refused(tmp_path: Path) -> None:
    prefix = (tmp_path / "objects" / "big").as_uri()
    write_token_dataset(prefix, np.arange(20).reshape(2, 10) * 10, vocab_size=200)
    ds = load_token_dataset(prefix)
    check_fits_model(ds, model_vocab_size=200, max_positions=10)
    with pytest.raises(DatasetError, match=rf"{prefix} has vocab_size 200, larger than the 64 of s3://m/step-1"):
        check_fits_model(ds, model_vocab_size=64, model_uri="s3://m/step-1")
    with pytest.raises(DatasetError, match="seq_len 10, longer than the 8 positions"):
        check_fits_model(ds, model_vocab_size=200, max_positions=8)


def test_induction_sequences_repeat_a_segment() -> None:
    batch = induction_sequences(num_sequences=200, seq_len=32, vocab_size=64, seed=3)
    again = induction_sequences(num_sequences=200, seq_len=32, vocab_size=64, seed=3)
    other = induction_sequences(num_sequences=200, seq_len=32, vocab_size=64, seed=4)
    assert np.array_equal(batch.tokens, again.tokens) and not np.array_equal(batch.tokens, other.tokens)
    assert batch.tokens.shape == (200, 32) and batch.tokens.min() >= 0 and batch.tokens.max() < 64
    rows, cols = np.nonzero(batch.in_context)
    src = batch.source[rows, cols]
    assert (src >= 0).all() and (src < cols).all()
    # Every in-context target equals the token after the earlier occurrence of the previous token.
    assert np.array_equal(batch.tokens[rows, cols], batch.tokens[rows, src])
    assert np.array_equal(batch.tokens[rows, cols - 1], batch.tokens[rows, src - 1])
    # Offsets vary, so no fixed look-back distance solves the task.
    assert len(np.unique(cols - src)) > 5
    assert 0.1 < batch.in_context.mean() < 0.5


def test_skip_bigrams_follow_the_fixed_map_and_keep_the_copy_exact() -> None:
    from workers.datasets import skip_bigram_map

    batch = induction_sequences(num_sequences=400, seq_len=32, vocab_size=64, seed=3, skip_bigram=0.3)
    table = skip_bigram_map(64)
    tok = batch.tokens
    follows = tok[:, 2:] == table[tok[:, :-2]]
    # ~30% set by the map plus chance (1/64) and the copies; far above chance alone.
    assert 0.2 < follows.mean() < 0.45
    plain = induction_sequences(num_sequences=400, seq_len=32, vocab_size=64, seed=3)
    assert (plain.tokens[:, 2:] == table[plain.tokens[:, :-2]]).mean() < 0.05
    rows, cols = np.nonzero(batch.in_context)
    assert (tok[rows, cols] == tok[rows, batch.source[rows, cols]]).all()
    with pytest.raises(DatasetError, match="skip_bigram is a probability"):
        induction_sequences(num_sequences=1, seq_len=8, vocab_size=8, seed=0, skip_bigram=1.5)


def test_skip_bigram_period_ties_the_structure_to_absolute_positions() -> None:
    from workers.datasets import skip_bigram_map

    batch = induction_sequences(num_sequences=600, seq_len=32, vocab_size=64, seed=5, skip_bigram=0.9,
                                skip_bigram_period=4)
    tok, table = batch.tokens, skip_bigram_map(64)
    follows = tok[:, 2:] == table[tok[:, :-2]]          # column j is position j + 2
    on = (np.arange(2, 32) % 4) == 0
    # At multiples of 4: the map at rate 0.9 (less where the repeated segment overwrote it).
    assert follows[:, on].mean() > 0.6
    # Elsewhere only chance (1/64) and what the copied segment carries over from an earlier multiple of 4.
    assert follows[:, ~on].mean() < 0.1
    rows, cols = np.nonzero(batch.in_context)
    assert (tok[rows, cols] == tok[rows, batch.source[rows, cols]]).all()
    anywhere = induction_sequences(num_sequences=600, seq_len=32, vocab_size=64, seed=5, skip_bigram=0.9)
    assert (anywhere.tokens[:, 2:] == table[anywhere.tokens[:, :-2]])[:, ~on].mean() > 0.6
    with pytest.raises(DatasetError, match="skip_bigram_period is a positive number"):
        induction_sequences(num_sequences=1, seq_len=8, vocab_size=8, seed=0, skip_bigram=0.2, skip_bigram_period=0)
