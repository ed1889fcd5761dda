"""The --group=NAME=DIR[,DIR...] argument the study scripts share."""
import argparse
from typing import List, Sequence, Tuple


def parse(parser: argparse.ArgumentParser, groups: Sequence[str]) -> List[Tuple[str, List[str]]]:
  """[(name, [run dir, ...]), ...]; a malformed one is a usage error."""
  parsed = []
  for group in groups:
    name, _, dirs = group.partition("=")
    if not dirs:
      parser.error(f"--group={group!r}: expected NAME=DIR[,DIR...]")
    parsed.append((name, dirs.split(",")))
  return parsed
