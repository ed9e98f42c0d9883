"""The photographs `spurjax data photos` composes: pinned Debian packages and the files used from each.

Objects are Tux Paint stamps (photographs cut out with an alpha channel): two families, land
mammals ("animal") and flowers ("flower"). Scenes are desktop wallpapers and Tux Paint templates
(plain photographs): two families, plants and trees seen close ("foliage") and rooms, machines
and things people made ("man-made"). Every file is named by its package and its path inside
the package; its phrase goes into captions ("a photo of a {object} {scene}").
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from spurjax.errors import SpurjaxError


@dataclasses.dataclass(frozen=True)
class Item:
  """One pinned source file: its package, its path inside the unpacked package, its caption phrase."""
  package: str
  path: str
  phrase: str


@dataclasses.dataclass(frozen=True)
class Family:
  """A class (object family) or a place (scene family): its name and its files."""
  name: str
  items: tuple[Item, ...]


STAMPS = "tuxpaint-stamps-default"
TEMPLATES = "tuxpaint-data"
LOMIRI = "lomiri-wallpapers-16.04"
MATE = "mate-backgrounds"
PLASMA = "plasma-workspace-wallpapers"
PACKAGES = (STAMPS, TEMPLATES, LOMIRI, MATE, PLASMA)

_MAMMALS = "usr/share/tuxpaint/stamps/animals/mammals/"
_FLOWERS = "usr/share/tuxpaint/stamps/plants/flowers/"


def _stamps(folder: str, pairs: str) -> tuple[Item, ...]:
  """Items from 'file:noun' pairs (a noun with spaces uses '_')."""
  out = []
  for pair in pairs.split():
    name, noun = pair.split(":")
    out.append(Item(STAMPS, folder + name, noun.replace("_", " ")))
  return tuple(out)


ANIMAL = Family("animal", _stamps(_MAMMALS, """
    apes/chimp.png:chimpanzee apes/gorilla.png:gorilla bears/bear.png:bear bears/european-bear.png:brown_bear
    bovines/bison.png:bison bovines/bull.png:bull bovines/cow.png:cow bovines/cow_white.png:cow
    bovines/gnu-stand.png:wildebeest bovines/goat.png:goat bovines/mountaingoat.png:mountain_goat
    bovines/ram.png:ram bovines/sheep.png:sheep bovines/yak.png:yak bovines/zebu.png:zebu
    camel/camel.png:camel camel/dromedary.png:dromedary cats/lion-2.png:lion cats/tiger.png:tiger
    deer/caribou.png:caribou deer/deer.png:deer deer/doe.png:deer deer/wapiti.png:elk dogs/dog.png:dog
    dogs/dingo.png:dingo equines/donkey.png:donkey equines/horse.png:horse equines/zebra.png:zebra
    rodents/marmot.png:marmot rodents/rabbit-2.png:rabbit rodents/squirrel.png:squirrel""")
                + _stamps("usr/share/tuxpaint/stamps/animals/marsupials/", "kangaroo.png:kangaroo wombat.png:wombat"))

FLOWER = Family("flower", _stamps(_FLOWERS, """
    adeenia.png:desert_rose anemone_red.png:anemone anthoorium.png:anthurium bolsom.png:balsam_flower
    chemparathi.png:hibiscus daffodil.png:daffodil flower1.png:flower flower2.png:flower flower3.png:flower
    flower4.png:flower flower5.png:flower flower6.png:flower flower7.png:lantana flower8.png:flower
    flower9.png:flower flower10.png:hibiscus iris.png:iris marigold.png:marigold pigface.png:pigface_flower
    red-gazania.png:gazania rose.png:rose whitestar-petunia.png:petunia yellow-flower.png:flower"""))

_T = "usr/share/tuxpaint/templates/"
_L = "usr/share/backgrounds/"
_M = "usr/share/backgrounds/mate/nature/"


def _plasma(name: str) -> str:
  return f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"


FOLIAGE = Family("foliage", (
    Item(TEMPLATES, _T + "corn_maze.jpg", "in a corn field"),
    Item(TEMPLATES, _T + "mossy_log.jpg", "on a mossy log"),
    Item(TEMPLATES, _T + "redwoods_above.jpg", "in a redwood forest"),
    Item(TEMPLATES, _T + "sun_behind_leaves.jpg", "in the leaves"),
    Item(TEMPLATES, _T + "trees_above.jpg", "under the trees"),
    Item(LOMIRI, _L + "life_by_Aitzol_Berasategi.jpg", "in a forest"),
    Item(LOMIRI, _L + "seeding_by_Clements_Engelhardt.jpg", "in a meadow"),
    Item(LOMIRI, _L + "Dragonfly_by_Bolly.jpg", "in an ivy bush"),
    Item(MATE, _M + "Blinds.jpg", "in front of a green leaf"),
    Item(MATE, _M + "RainDrops.jpg", "among wet leaves"),
    Item(MATE, _M + "GreenMeadow.jpg", "in tall grass"),
    Item(PLASMA, _plasma("Path"), "in a forest"),
    Item(PLASMA, _plasma("OneStandsOut"), "on moss"),
))

MAN_MADE = Family("man-made", (
    Item(TEMPLATES, _T + "wool_mill_machine.jpg", "in a mill"),
    Item(TEMPLATES, _T + "lighthouse.jpg", "in front of a lighthouse"),
    Item(LOMIRI, _L + "Wine_by_Jakkub_Mede.jpg", "in a living room"),
    Item(LOMIRI, _L + "Picture_0B_by_freespace.jpg", "on a kitchen table"),
    Item(LOMIRI, _L + "Picture_1A_by_freespace.jpg", "in an art studio"),
    Item(LOMIRI, _L + "greentock_by_Peter_Nerlich.jpg", "in front of a clock"),
    Item(LOMIRI, _L + "Bridge_by_Sander_Klootwijk.jpg", "on a bridge"),
    Item(MATE, _M + "Wood.jpg", "on a wooden deck"),
    Item(MATE, _M + "Storm.jpg", "on a highway"),
    Item(PLASMA, _plasma("Grey"), "in a modern building"),
    Item(PLASMA, _plasma("ColorfulCups"), "among plastic cups"),
))

OBJECTS = (ANIMAL, FLOWER)   # y = index
SCENES = (FOLIAGE, MAN_MADE)  # place = index


def packages_of(families: Sequence[Family]) -> list[str]:
  """The packages the families' files come from, in first-use order."""
  seen: dict[str, None] = {}
  for fam in families:
    for it in fam.items:
      seen.setdefault(it.package, None)
  return list(seen)


def locate(item: Item, roots: Mapping[str, str]) -> str:
  """The file of `item` under its unpacked package in `roots` (package -> folder); one-line error if absent."""
  if item.package not in roots:
    raise SpurjaxError(f"photos: package {item.package} is not unpacked (needed for {item.path})")
  path = os.path.join(roots[item.package], item.path)
  if not os.path.isfile(path):
    raise SpurjaxError(f"photos: package {item.package} has no file {item.path} (looked in {roots[item.package]}); "
                       f"its version may differ from the one this benchmark pins")
  return path


def check_all(families: Sequence[Family], roots: Mapping[str, str]) -> None:
  """Checks every pinned file exists (the first missing one is the error)."""
  for fam in families:
    for it in fam.items:
      locate(it, roots)
