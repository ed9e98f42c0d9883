"""The object noun of each class, used in every DDB prompt."""
from __future__ import annotations

from spurjax.errors import SpurjaxError


def nouns_for(cfg, table) -> list[str]:
  """The object noun of each class: `cfg.ddb.nouns`, else the table's class names."""
  nouns = list(cfg.ddb.nouns or ())
  if not nouns:
    nouns = list(table.class_names or ())
  if not nouns:
    raise SpurjaxError(f"config ddb.nouns is empty and dataset {table.name} has no class names; "
                       "set --config.ddb.nouns='(\"bird\",\"bird\")' (one noun per class)")
  if len(nouns) < table.num_classes:
    raise SpurjaxError(f"config ddb.nouns: {len(nouns)} nouns for {table.num_classes} classes")
  return [str(n) for n in nouns]
