"""The photographs `spurjax data photo-broad` composes: object families pinned by file, and its scenes.

Objects are Tux Paint stamps that are photographs (cut out with an alpha channel), grouped into
families that are none of the real-photo benchmark's classes and no bird: no land mammal, no
flower. Drawn or clip-art stamps, and the mirrored duplicates of photographs, are left out (the
composer flips cut-outs itself). Scenes are the benchmark's own wallpaper and template photographs
(`spurjax.data.photo_sources`): there the scene family is the spurious attribute, here it is only
a background, and every family is shown on both scene families equally often.
"""
from __future__ import annotations

from spurjax.data.photo_sources import FOLIAGE, MAN_MADE, STAMPS, Family, Item

_S = "usr/share/tuxpaint/stamps/"


def _family(name: str, files: str) -> Family:
  """A family from stamp paths below the stamps folder; a file's phrase is its name in words."""
  items = []
  for rel in files.split():
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    items.append(Item(STAMPS, _S + rel, stem.replace("_", " ").replace("-", " ").lower()))
  return Family(name, tuple(items))


SEA_CREATURE = _family("sea-creature", """
    animals/fish/bluegroper.png animals/fish/butterflyfish.png animals/fish/clownfish.png
    animals/fish/coraltrout.png animals/fish/dolphinfish.png animals/fish/lionfish.png animals/fish/lobster.png
    animals/fish/moonwrasse.png animals/fish/seahorse.png animals/fish/shrimp.png animals/fish/stripedfish.png
    animals/shellfish/abalone.png animals/shellfish/murray-mussel.png""")

BUG = _family("bug", """
    animals/insects/Brown_slug.png animals/insects/Woodlouse.png animals/insects/fly.png
    animals/insects/grasshopper.png animals/insects/hornet.png animals/insects/hoverfly.png
    animals/insects/mantis.png animals/insects/xanthia.png""")

PLANT = _family("plant", """
    plants/trees/holly_leaves.png plants/trees/holm_oak.png plants/trees/liberia-palm.png
    plants/trees/pinecone.png plants/trees/rambutan.png plants/trees/tree336.png plants/eggplant.png
    plants/lettuce_bolted.png plants/thyme.png""")

FRUIT = _family("fruit", """
    food/fruit/Apricot_whole.png food/fruit/Cherry_Stella.png food/fruit/Strawberry2.png
    food/fruit/apple_fuji.png food/fruit/apple_granny_smith.png food/fruit/apple_green.png food/fruit/apple_red.png
    food/fruit/apple_sierra_beauty.png food/fruit/apricot.png food/fruit/avocado.png food/fruit/banana.png
    food/fruit/cherimoya.png food/fruit/grapes.png food/fruit/kiwi.png food/fruit/lemon.png
    food/fruit/mandarine.png food/fruit/mango.png food/fruit/orange.png food/fruit/orange_seville.png
    food/fruit/pear.png food/fruit/pineapple.png food/fruit/pomegranate.png food/fruit/raspberry.png
    food/fruit/sliced_lime.png food/fruit/sliced_orange.png food/fruit/strawberry.png""")

VEGETABLE = _family("vegetable", """
    food/vegetables/broccoli.png food/vegetables/carrot.png food/vegetables/chilepepper.png
    food/vegetables/corn.png food/vegetables/eggplant.png food/vegetables/garlic.png food/vegetables/garlics.png
    food/vegetables/lettuce.png food/vegetables/mushroom.png food/vegetables/onion.png
    food/vegetables/pattypan_squash.png food/vegetables/pepper.png food/vegetables/potato.png
    food/vegetables/pumpkin_small.png food/vegetables/redlettuce.png food/vegetables/tomato.png
    food/vegetables/yam.png food/vegetables/yellowpepper.png food/spices/ginger.png plants/mushrooms/cep.png
    plants/mushrooms/cep-1.png plants/mushrooms/cep-2.png""")

VEHICLE = _family("vehicle", """
    vehicles/auto/beetle.png vehicles/auto/sedan.png vehicles/auto/sportscar2.png vehicles/auto/truck.png
    vehicles/construction/dumper.png vehicles/cycle/pink_tricycle.png vehicles/emergency/firetruck.png
    vehicles/flight/balloon360.png vehicles/flight/planes/747.png vehicles/garbagetruck.png
    vehicles/masstransit/green_korean_bus.png vehicles/race/indycar.png vehicles/ship/chineseJunk.png
    vehicles/ship/walnutBoat.png military/vehicles/bradley.png military/vehicles/f22_raptor.png
    military/vehicles/infantry-stryker.png military/vehicles/ww2_german_gun.png""")

TOOL = _family("tool", """
    household/tools/cementmixer.png household/tools/hammer.png household/tools/mallet_metal.png
    household/tools/measuring_tape.png household/tools/paintbrush_large.png household/tools/plyers.png
    household/tools/saw.png household/tools/spade.png household/tools/toolbox.png household/tools/wrench.png
    household/tools/wrench_adjustable.png household/tools/wrench_plumbers.png
    household/arttools/scissors_small_closed.png household/arttools/scissors_small_open.png""")

HOUSEHOLD = _family("household-object", """
    household/Lightbulb.png household/cylinder.png household/garbagecan.png household/home_compost_bin.png
    household/kettle.png household/key.png household/rubberduck.png household/toilet.png
    household/wheelie_bin.png household/dishes/pitcher_small.png household/dishes/teapot.png
    household/dishes/utensils/nutcracker.png household/dishes/utensils/pepper_grinder.png
    hobbies/binoculars.png hobbies/camera_35mm.png seasonal/candle.png""")

INSTRUMENT = _family("instrument", """
    hobbies/music/brass/trumpet.png hobbies/music/percussion/cymbal_crash.png
    hobbies/music/percussion/drum_tomtom_floor.png hobbies/music/percussion/drumkit.png
    hobbies/music/string/cello.png hobbies/music/string/guitar2.png hobbies/music/string/guitar_classical.png
    hobbies/music/string/guitar_electric.png hobbies/music/string/guitar_electric_bass.png
    hobbies/music/string/violin.png hobbies/music/wind/bassoon.png""")

SPORTS = _family("sports-gear", """
    sports/australian_rules_football.png sports/basketball.png sports/cricketball.png sports/football.png
    sports/soccer.png sports/tennis_ball.png sports/tennis_racket.png sports/trophy_cup.png""")

COIN = _family("coin", """
    symbols/money/canadian/coins/001penny.png symbols/money/canadian/coins/005nickel.png
    symbols/money/canadian/coins/010dime.png symbols/money/canadian/coins/025quarter.png
    symbols/money/canadian/coins/100loonie.png symbols/money/canadian/coins/200toonie.png
    symbols/money/japanese/yen001.png symbols/money/japanese/yen005.png symbols/money/japanese/yen010.png
    symbols/money/japanese/yen050.png symbols/money/japanese/yen100.png symbols/money/japanese/yen500.png
    symbols/money/us/coins/001penny.png symbols/money/us/coins/005nickel.png symbols/money/us/coins/010dime.png
    symbols/money/us/coins/025quarter.png symbols/money/us/coins/050kennedy-halfdollar.png
    symbols/money/us/coins/100sacagawea.png""")

PLANET = _family("planet", """
    space/moon/moon_3qt.png space/moon/moon_crescent.png space/moon/moon_full.png space/planets/1_mercury.png
    space/planets/2_venus.png space/planets/3_earth.png space/planets/4_mars.png space/planets/5_jupiter.png
    space/planets/7_uranus.png space/planets/8_neptune.png space/planets/9_pluto.png""")

GRAVESTONE = _family("gravestone", " ".join(f"seasonal/halloween/grave-{c}.png" for c in "abcdefghij"))

OBJECTS = (SEA_CREATURE, BUG, PLANT, FRUIT, VEGETABLE, VEHICLE, TOOL, HOUSEHOLD, INSTRUMENT, SPORTS, COIN, PLANET,
           GRAVESTONE)  # y = index
SCENES = (FOLIAGE, MAN_MADE)  # place = index
MIN_FILES = 8  # distinct cut-outs a family needs
