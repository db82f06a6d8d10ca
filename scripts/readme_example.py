"""Prints the first ```python block of a README section: `python scripts/readme_example.py
"The library"`. CI runs what it prints in a base install; tests read the same blocks."""

import pathlib
import re
import sys


def example(section: str, readme: str | pathlib.Path = "README.md") -> str:
  text = pathlib.Path(readme).read_text(encoding="utf-8")
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", body, re.S).group(1)


if __name__ == "__main__":
  print(example(sys.argv[1]))
