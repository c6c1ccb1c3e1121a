"""Token datasets in the object store, and the synthetic induction task of the demo.

Layout of a dataset prefix: `tokens.bin` (flat array of token ids, little-endian) and
`header.json` ({dtype, vocab_size, seq_len, num_sequences}). The loaded dataset keeps
the whole (N, seq_len) LongTensor as `.tokens` so the estimator can index batches
directly instead of collating item by item.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from workers.cache import CacheError, LocalCache
from workers.checkpoints import fingerprint_of
from workers.objectstore import ObjectStoreError, join_uri, open_store

TOKENS_FILE = "tokens.bin"
HEADER_FILE = "header.json"
_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "int64")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names its URI and the fix."""


@dataclass(frozen=True)
class DatasetHeader:
    dtype: str
    vocab_size: int
    seq_len: int
    num_sequences: int


class TokenDataset(Dataset):
    """Fixed-length token sequences; items are LongTensor (seq_len,)."""

    def __init__(self, tokens: torch.Tensor, *, vocab_size: int, uri: str = "") -> None:
        self.tokens = tokens            # (N, seq_len) int64
        self.vocab_size = vocab_size
        self.uri = uri

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens[index]

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])


def smallest_dtype(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "int32"


def write_token_dataset(uri: str, tokens: np.ndarray, *, vocab_size: int) -> DatasetHeader:
    """Store an (N, seq_len) integer array as a dataset prefix (tokens first, header last)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size == 0:
        raise DatasetError(f"The dataset for {uri} must be a non-empty (num_sequences, seq_len) array.")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise DatasetError(f"The dataset for {uri} has token ids outside [0, {vocab_size}); fix vocab_size.")
    dtype = smallest_dtype(vocab_size)
    header = DatasetHeader(dtype=dtype, vocab_size=vocab_size, seq_len=int(tokens.shape[1]),
                           num_sequences=int(tokens.shape[0]))
    store = open_store(uri)
    store.put_bytes(TOKENS_FILE, tokens.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
    store.put_bytes(HEADER_FILE, json.dumps(asdict(header), indent=1).encode())
    return header


def _parse_header(raw: bytes, uri: str) -> DatasetHeader:
    try:
        meta = json.loads(raw)
        header = DatasetHeader(dtype=str(meta["dtype"]), vocab_size=int(meta["vocab_size"]),
                               seq_len=int(meta["seq_len"]), num_sequences=int(meta["num_sequences"]))
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"The header {join_uri(uri, HEADER_FILE)} is not JSON with dtype, vocab_size, "
                           "seq_len and num_sequences; rewrite it.") from None
    if header.dtype not in _DTYPES:
        raise DatasetError(f"The header {join_uri(uri, HEADER_FILE)} has dtype {header.dtype!r}; use one of "
                           f"{', '.join(_DTYPES)}.")
    if min(header.vocab_size, header.seq_len, header.num_sequences) <= 0:
        raise DatasetError(f"The header {join_uri(uri, HEADER_FILE)} has a non-positive size; rewrite it.")
    return header


def read_header(uri: str) -> DatasetHeader:
    """The dataset's header alone (one small read): what submission checks before writing jobs."""
    uri = uri.rstrip("/")
    try:
        raw = open_store(uri).get_bytes(HEADER_FILE)
    except ObjectStoreError as exc:
        raise DatasetError(f"There is no token dataset at {uri} ({str(exc).rstrip('.')}); point the dataset URI "
                           "at a prefix holding tokens.bin + header.json.") from exc
    return _parse_header(raw, uri)


_MEMO: OrderedDict[tuple[str, str, int | None], TokenDataset] = OrderedDict()
_MEMO_SIZE = 4


def dataset_fingerprint(uri: str) -> str:
    """The content fingerprint of a dataset prefix (what the cache keys it by)."""
    uri = uri.rstrip("/")
    try:
        listing = {o.key: o for o in open_store(uri).list() if o.key in (TOKENS_FILE, HEADER_FILE)}
    except ObjectStoreError as exc:
        raise DatasetError(str(exc)) from exc
    if len(listing) < 2:
        raise DatasetError(f"There is no token dataset at {uri}; point the dataset URI at a prefix holding "
                           "tokens.bin + header.json.")
    return fingerprint_of(tuple(listing[name] for name in (HEADER_FILE, TOKENS_FILE)))


def load_token_dataset(uri: str, *, cache: LocalCache | None = None, max_sequences: int | None = None,
                       memo: bool = False, fingerprint: str | None = None) -> TokenDataset:
    """Load a dataset prefix (through the local cache when given).

    memo=True keeps the last few datasets of this process in memory, keyed by content
    fingerprint, so consecutive jobs on one worker do not re-read the same tokens.
    """
    uri = uri.rstrip("/")
    if max_sequences is not None and max_sequences <= 0:
        raise DatasetError(f"max_sequences for {uri} must be positive, got {max_sequences}.")
    hit = cache.cached(uri, fingerprint) if cache is not None and fingerprint else None
    try:
        store = open_store(uri)
        # A cached copy of the fingerprint asked for needs no listing: the job runs while S3 is away.
        listing = {o.key: o for o in (hit[1] if hit else store.list()) if o.key in (TOKENS_FILE, HEADER_FILE)}
    except ObjectStoreError as exc:
        raise DatasetError(str(exc)) from exc
    missing = [name for name in (HEADER_FILE, TOKENS_FILE) if name not in listing]
    if missing:
        raise DatasetError(f"There is no token dataset at {uri} (missing {' and '.join(missing)}); point the "
                           "dataset URI at a prefix holding tokens.bin + header.json.")
    files = tuple(listing[name] for name in (HEADER_FILE, TOKENS_FILE))
    key = (uri, fingerprint_of(files), max_sequences)
    if memo and key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    try:
        if cache is not None:
            local = cache.fetch(uri, key[1], files)
        else:
            local = None
        raw_header = (local / HEADER_FILE).read_bytes() if local else store.get_bytes(HEADER_FILE)
        header = _parse_header(raw_header, uri)
        dtype = np.dtype(header.dtype).newbyteorder("<")
        expected = header.num_sequences * header.seq_len * dtype.itemsize
        if listing[TOKENS_FILE].size != expected:
            raise DatasetError(f"The tokens file {join_uri(uri, TOKENS_FILE)} has {listing[TOKENS_FILE].size} "
                               f"bytes but its header promises {expected}; rewrite the dataset.")
        if local:
            array = np.fromfile(Path(local) / TOKENS_FILE, dtype=dtype)
        else:
            array = np.frombuffer(store.get_bytes(TOKENS_FILE), dtype=dtype)
    except (ObjectStoreError, CacheError) as exc:
        raise DatasetError(str(exc)) from exc
    array = array.reshape(header.num_sequences, header.seq_len)
    if max_sequences is not None:
        array = array[:max_sequences]
    tokens = torch.from_numpy(array.astype(np.int64))
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= header.vocab_size):
        raise DatasetError(f"The dataset {uri} holds token ids outside its vocab_size {header.vocab_size}; "
                           "rewrite it or fix header.json.")
    dataset = TokenDataset(tokens, vocab_size=header.vocab_size, uri=uri)
    if memo:
        _MEMO[key] = dataset
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return dataset


def check_fits_model(dataset: TokenDataset, *, model_vocab_size: int, max_positions: int | None = None,
                     model_uri: str = "the model") -> None:
    """Refuse a dataset the model cannot embed (larger vocab, longer sequences)."""
    if dataset.vocab_size > model_vocab_size:
        raise DatasetError(f"The dataset {dataset.uri} has vocab_size {dataset.vocab_size}, larger than the "
                           f"{model_vocab_size} of {model_uri}; use a dataset tokenized for that model.")
    if max_positions is not None and dataset.seq_len > max_positions:
        raise DatasetError(f"The dataset {dataset.uri} has seq_len {dataset.seq_len}, longer than the "
                           f"{max_positions} positions of {model_uri}; use shorter sequences.")


# --------------------------------------------------------------------------- the demo task


@dataclass(frozen=True)
class InductionBatch:
    tokens: np.ndarray       # (N, seq_len) int64
    in_context: np.ndarray   # (N, seq_len) bool: target positions predictable only by copying
    source: np.ndarray       # (N, seq_len) int64: for in-context targets, the earlier position holding it


def skip_bigram_map(vocab_size: int) -> np.ndarray:
    """The fixed token → token map of the skip-bigram structure (the same for every seed, so
    the training batches, the λ̂ dataset and the held-out set share it)."""
    return np.random.default_rng(10_007).permutation(vocab_size).astype(np.int64)


def _add_skip_bigrams(tokens: np.ndarray, rng: np.random.Generator, rate: float, vocab_size: int,
                      period: int = 1) -> None:
    """With probability `rate`, token t becomes map[token t − 2]: predictable from the token two
    back, which a layer-0 previous-token head hands to position t − 1 (a half induction circuit
    that pays off on its own). `period` > 1 restricts it to positions t ≡ 0 (mod period): the
    structure is then tied to absolute positions, so attention keyed on the position embeddings
    of those positions alone fits it (a positional table rather than a shift-invariant head)."""
    table = skip_bigram_map(vocab_size)
    pick = rng.random(tokens.shape) < rate
    pick[:, :2] = False
    if period > 1:
        pick[:, np.arange(tokens.shape[1]) % period != 0] = False
    for t in np.nonzero(pick.any(0))[0]:  # left to right, so a chain of picks stays consistent
        rows = pick[:, t]
        tokens[rows, t] = table[tokens[rows, t - 2]]


def induction_sequences(*, num_sequences: int, seq_len: int, vocab_size: int, seed: int | np.random.Generator,
                        min_segment: int | None = None, max_segment: int | None = None,
                        skip_bigram: float = 0.0, skip_bigram_period: int = 1) -> InductionBatch:
    """Uniform random tokens in which a random segment appears twice at random offsets.

    Only an induction circuit predicts the second copy: find the earlier occurrence of the
    current token and copy the token after it. The random offsets rule out positional shortcuts.
    `skip_bigram` > 0 adds structure a previous-token head alone can use (see _add_skip_bigrams),
    laid down before the segment is copied so the copy stays exact; `skip_bigram_period` > 1
    lays it only at positions that are multiples of the period.
    """
    if not 0.0 <= skip_bigram < 1.0:
        raise DatasetError(f"skip_bigram is a probability in [0, 1), got {skip_bigram}; pick e.g. 0.2.")
    if skip_bigram_period < 1:
        raise DatasetError(f"skip_bigram_period is a positive number of positions, got {skip_bigram_period}; "
                           "1 puts skip-bigrams anywhere.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lo = min_segment or max(2, seq_len // 6)
    hi = max_segment or max(lo, seq_len // 2)
    tokens = rng.integers(0, vocab_size, size=(num_sequences, seq_len), dtype=np.int64)
    if skip_bigram > 0:
        _add_skip_bigrams(tokens, rng, skip_bigram, vocab_size, skip_bigram_period)
    in_context = np.zeros((num_sequences, seq_len), dtype=bool)
    source = np.full((num_sequences, seq_len), -1, dtype=np.int64)
    lengths = rng.integers(lo, hi + 1, size=num_sequences)
    for i, s in enumerate(lengths):
        gap_total = seq_len - 2 * s
        a = int(rng.integers(0, gap_total + 1))
        b = int(rng.integers(a + s, seq_len - s + 1))
        tokens[i, b:b + s] = tokens[i, a:a + s]
        # Target b+j (j>=1) is predicted at position b+j-1 by attending to a+j.
        in_context[i, b + 1:b + s] = True
        source[i, b + 1:b + s] = np.arange(a + 1, a + s)
    return InductionBatch(tokens=tokens, in_context=in_context, source=source)
