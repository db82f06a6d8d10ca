"""The character side of a word: its character ids, and the batch's deduplicated character
table in tiers of 16, 8 and 4 characters, so the character BiRNN runs once per distinct
word form, over about as many characters as each form needs.

A word longer than `max_chars` keeps its first and last `max_chars // 2` characters
(prefix and suffix carry the morphology). The character BiRNN runs once per distinct word
form of a batch, not once per position (`dedup_chars`: about 0.4 distinct forms per padded
position), which halves its cost, and over as many characters as a form needs, near
enough: the distinct forms, longest first, go into tiers of 16, 8 and 4 characters
(`CHAR_TIERS`), which halves it again.
"""

import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.data.vocab import PAD, Vocab


class CharEncoder:
  """A word -> its character ids; words longer than `max_chars` keep their first and last
  `max_chars // 2` characters (so no real character is cut off by the batcher)."""

  # Words whose ids are kept (a corpus repeats its words: EWT's 254,818 tokens are 23,042
  # forms); past this many the memo starts again, so streaming a huge file stays bounded.
  MEMO_SIZE = 1 << 17

  def __init__(self, vocab: Vocab, max_chars: int):
    self.vocab, self.max_chars = vocab, max_chars
    self._memo: dict[str, np.ndarray] = {}

  def clip(self, word: str) -> str:
    if len(word) <= self.max_chars:
      return word
    head = self.max_chars // 2
    return word[:head] + word[len(word) - (self.max_chars - head):]

  def encode(self, word: str) -> np.ndarray:
    """int32 [len(clip(word))], read-only (one array per distinct word)."""
    ids = self._memo.get(word)
    if ids is None:
      if len(self._memo) >= self.MEMO_SIZE:
        self._memo.clear()
      ids = self._memo[word] = self.vocab.encode(self.clip(word))
      ids.flags.writeable = False
    return ids


# The deduplicated character table's tiers, longest forms first: (share of the table's rows,
# share of max_chars). A training batch's distinct EWT forms are 5.2 characters long on
# average; 11% of them (at most 16% in a batch) are longer than 8 and 53% longer than 4. So
# rows of 16, 8 and 4 characters run the character BiRNN over 8.5 steps a row instead of 16;
# a batch whose forms do not fit the tiers keeps one table of max_chars (a second shape).
CHAR_TIERS = ((0.25, 1.0), (0.375, 0.5), (0.375, 0.25))


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`np.unique(rows, axis=0, return_inverse=True)` for an integer [N, C] array: the distinct
  rows in lexicographic order and each row's place among them [N]. A lexsort over the
  columns: np.unique sorts the rows as structured records, ~60x slower (4 s of a POS
  `:smoke` run's batches)."""
  order = np.lexsort(rows.T[::-1])
  ordered = rows[order]
  first = np.ones(len(rows), bool)
  first[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
  index = np.empty(len(rows), np.intp)
  index[order] = np.cumsum(first) - 1
  return ordered[first], index


def dedup_chars(batch: dict[str, np.ndarray], per_row: int | None = None,
                tiers: bool = True) -> dict[str, np.ndarray]:
  """Replaces `chars` [B, T, C] by the batch's distinct character rows and an index.

  The distinct rows, longest first (the all-PAD row among the last), fill a table of
  B * K rows, K = ceil(T / 2), or T when a batch has more than B * ceil(T / 2) distinct rows
  (then a second shape); unused rows are PAD. With C >= 8 the table is cut into the
  `CHAR_TIERS`, so `chars` is a tuple (int32 [B, K_0, C], [B, K_1, C // 2],
  [B, K_2, C // 4]) whose rows, in that order, are the table's; otherwise (or when the
  forms do not fit) it is the int32 [B, K, C] table. `char_index` int32 [B, T] is the row
  of the table (tiers concatenated, each flattened) holding position (b, t)'s characters.
  `per_row` (K) and `tiers=False` (one table) impose a layout instead, so that the batches
  of several members (`dedup_common`) share shapes; every layout gives the same logits.
  """
  chars = batch["chars"]
  size, steps, width = chars.shape
  rows, index = unique_rows(chars.reshape(-1, width))
  lengths = np.sum(rows != PAD, axis=1)
  order = np.argsort(-lengths, kind="stable")
  rows, lengths = rows[order], lengths[order]
  index = np.argsort(order)[index.reshape(-1)]     # old row -> its place in sorted order
  per_row = natural_per_row(size, steps, len(rows)) if per_row is None else per_row
  if len(rows) > size * per_row:
    raise ValueError(f"per_row={per_row}: {len(rows)} distinct forms need more than "
                     f"{size} x {per_row} rows.")
  table = np.zeros((size * per_row, width), np.int32)
  table[:len(rows)] = rows
  tiered = (_tier_table(table, np.pad(lengths, (0, len(table) - len(rows))), size, per_row)
            if tiers else None)
  return {**batch, "chars": tiered if tiered is not None else table.reshape(size, per_row,
                                                                             width),
          "char_index": index.reshape(size, steps).astype(np.int32)}


def natural_per_row(size: int, steps: int, num_forms: int) -> int:
  """`dedup_chars`' own K: half the steps (rounded up), or all of them when a batch of
  `size` rows has more distinct forms than that holds."""
  per_row = -(-steps // 2)
  return steps if num_forms > size * per_row else per_row


def dedup_common(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  """`dedup_chars` of each batch (their `chars` [B, T, C] of one shape) in one layout: the
  largest K any of them needs, tiers only where every batch fits them."""
  out = [dedup_chars(b) for b in batches]     # each in its own layout: most steps agree
  rows = lambda chars: sum(t.shape[1] for t in chars) if isinstance(chars, tuple) \
      else chars.shape[1]
  per_row = max(rows(b["chars"]) for b in out)
  out = [o if rows(o["chars"]) == per_row else dedup_chars(b, per_row)
         for o, b in zip(out, batches)]
  if len({isinstance(b["chars"], tuple) for b in out}) > 1:
    out = [dedup_chars(b, per_row, tiers=False) for b in batches]
  return out


def _tier_table(table, lengths, size, per_row):
  """`table` [B * K, C] (rows sorted longest first, `lengths` theirs) cut into `CHAR_TIERS`:
  a tuple of [B, K_i, C_i], or None when C < 8 or a row is longer than its tier."""
  width = table.shape[1]
  if width < 8:
    return None
  counts = [int(np.ceil(share * per_row)) for share, _ in CHAR_TIERS[:-1]]
  counts.append(per_row - sum(counts))
  if counts[-1] < 1:          # a short sentence's small table: not worth cutting
    return None
  tiers, first = [], 0
  for (_, share), count in zip(CHAR_TIERS, counts):
    tier_width, last = int(width * share), first + size * count
    if lengths[first] > tier_width:
      return None
    tiers.append(table[first:last, :tier_width].reshape(size, count, tier_width))
    first = last
  return tuple(tiers)


def char_table(chars) -> np.ndarray:
  """`dedup_chars`'s `chars` (a table or its tiers) -> the table [R, C] that `char_index`
  indexes, shorter tiers padded back to C."""
  tiers = chars if isinstance(chars, tuple) else (chars,)
  width = tiers[0].shape[-1]
  return np.concatenate([np.pad(np.asarray(t).reshape(-1, t.shape[-1]),
                                ((0, 0), (0, width - t.shape[-1]))) for t in tiers])


def map_char_rows(fn, chars) -> jax.Array:
  """`fn` (character ids [N, C_i] -> [N, ...], e.g. the character BiRNN) applied to each tier
  of `dedup_chars`'s `chars`: [R, ...], row r what `fn` gives `char_table(chars)[r]`."""
  tiers = chars if isinstance(chars, tuple) else (chars,)
  return jnp.concatenate([fn(t.reshape(-1, t.shape[-1])) for t in tiers])
