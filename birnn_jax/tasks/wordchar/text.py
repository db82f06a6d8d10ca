"""Tokenising a user's plain text into words, roughly as UD English-EWT is tokenised.

What `--mode=predict --text` and plain-text files read for the word taggers (POS, NER).
"""

import re

_CLITIC = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'m|'d)$")
_EDGE_PUNCT = "\"'`()[]{}<>,;:!?.\u201c\u201d\u2018\u2019\u2026"


def tokenize(text: str, is_word=lambda token: False) -> list[str]:
  """Whitespace tokens with edge punctuation and English clitics split off, EWT-style:
  "Don't stop, (please)!" -> Do n't stop , ( please ) !. A run of '.', '!' or '?' is one
  token ("..."). A final '.' stays on a token that
  `is_word` knows with it ("Mr.", "Inc.") or that has another '.' inside ("U.S.", "e.g.")."""
  out = []
  for chunk in text.split():
    if len(set(chunk)) == 1 and chunk[0] in _EDGE_PUNCT:   # "...", "!!", "--"
      out.append(chunk)
      continue
    lead, tail = [], []
    while len(chunk) > 1 and chunk[0] in _EDGE_PUNCT:
      lead.append(chunk[0])
      chunk = chunk[1:]
    while len(chunk) > 1 and chunk[-1] in _EDGE_PUNCT:
      if chunk[-1] == "." and chunk[-2] not in _EDGE_PUNCT and (
          is_word(chunk) or "." in chunk[:-1]):
        break
      run = len(chunk) - len(chunk.rstrip(chunk[-1])) if chunk[-1] in ".!?" else 1
      run = min(run, len(chunk) - 1)   # "..." stays one token, as in EWT
      tail.insert(0, chunk[-run:])
      chunk = chunk[:-run]
    match = _CLITIC.match(chunk)
    middle = [match[1], match[2]] if match and match[1].isalpha() else [chunk]
    out.extend(lead + middle + tail)
  return out
