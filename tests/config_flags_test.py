"""core/config_flags.py: flags, recipe and docs from one typed config."""
import dataclasses
from typing import Optional, Tuple

from absl import flags
import pytest

from cxr_edge.core import config_flags
from cxr_edge.core.config_flags import RECIPE, REFUSED, option


@dataclasses.dataclass
class Toy:
  data_dir: str = option(help="Input.")
  seed: int = option(42, lower_bound=0, qat=RECIPE, help="Seed.")
  rate: float = option(0.5, lower_bound=0.0, upper_bound=1.0, help="Rate.", doc="the rate")
  kind: str = option("a", choices=lambda: ["a", "b"], qat=RECIPE, help="Kind.")
  names: Tuple[str, ...] = option(("x", "y"), help="Names.")
  fast: bool = option(False, qat=REFUSED, help="Fast.", identity=False)
  limit: Optional[int] = option(None, lower_bound=1, help="Limit.")
  internal: int = 0  # not an option


def _parsed(*argv):
  values = flags.FlagValues()
  config_flags.define_flags(Toy, values, required=("data_dir",))
  values(["prog", *argv])
  return values


def test_flags_carry_the_fields_defaults_types_and_checks():
  values = _parsed("--data_dir=d", "--kind=b", "--names=p,q,r", "--fast", "--limit=3")
  assert config_flags.from_flags(Toy, values) == {
      "data_dir": "d", "seed": 42, "rate": 0.5, "kind": "b", "names": ("p", "q", "r"),
      "fast": True, "limit": 3}
  assert Toy(**config_flags.from_flags(Toy, values)).internal == 0
  for bad in ("--rate=2", "--kind=c", "--seed=-1", "--limit=0"):
    with pytest.raises(flags.IllegalFlagValueError):
      _parsed("--data_dir=d", bad)


def test_recipe_refusals_and_identity_are_read_off_the_fields():
  assert config_flags.names(Toy, qat=RECIPE) == ("seed", "kind")
  values = _parsed("--data_dir=d", "--seed=3", "--fast", "--rate=0.1")
  assert config_flags.present(Toy, (RECIPE, REFUSED), values) == ["--seed", "--fast"]
  assert [f.name for f in dataclasses.fields(Toy) if f.metadata.get("identity") is False] == [
      "fast"]


def test_markdown_rows_show_defaults_and_the_docs_wording():
  rows = config_flags.markdown_rows(Toy, required=("data_dir",))
  assert rows[0] == "| `--data_dir` | required | Input. |"
  assert "| `--rate` | `0.5` | the rate |" in rows
  assert "| `--names` | `x,y` | Names. |" in rows and "| `--limit` | unset | Limit. |" in rows
  assert not any("internal" in r for r in rows)
