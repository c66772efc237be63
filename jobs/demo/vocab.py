"""The small vocabulary and sentence templates the demo corpus is written from.

Templates keep fixed runs to three words or fewer, so word 5-grams always span two random slots: documents
stay varied enough to pass Gopher's repetition rules, yet the language is small enough that a tiny model
learns it in minutes.
"""

from __future__ import annotations

NOUNS = (
    "river garden village teacher market engine harbor library bridge forest kitchen window council doctor "
    "farmer station museum school lantern mountain island orchard factory painter captain student valley castle "
    "theater baker soldier merchant tower meadow journal letter machine compass blanket festival"
).split()
PLURALS = (
    "birds children workers boats houses stories songs roads clouds horses lamps letters books tools fields "
    "streets apples rivers gardens friends neighbors sailors teachers engines markets bridges students farmers "
    "islands windows candles rooms ships trains maps coins stones trees hills doors"
).split()
ADJECTIVES = (
    "quiet old bright small narrow busy gentle ancient golden silver hidden modern patient careful famous simple "
    "distant crowded empty warm cold green heavy honest curious sudden steady broad clever humble lively polished "
    "rusty sunny rainy tall wooden young proud tired"
).split()
VERBS = (
    "build repair visit carry paint study describe protect follow measure explain clean open prepare watch "
    "collect improve support discover deliver design share remember organize count teach borrow plant cross guide"
).split()
PAST = (
    "built repaired visited carried painted studied described protected followed measured explained cleaned "
    "opened prepared watched collected improved supported discovered delivered designed shared remembered "
    "organized counted taught borrowed planted crossed guided"
).split()
PLACES = (
    "Marlow Brenton Ashford Kelby Dunmore Fairhaven Greystone Hollis Ivybridge Lindon Millbrook Northam Oakridge "
    "Pemberton Redfield Stanmore Thornbury Westwick Yarrow Caldera Alderney Bexley Corwen Deepdale Elmstead Farley "
    "Glenmore Harlow Inverey Kingsley Larkhill Moreton Newbury Orford Padstow Quenby Rosedale Selby Tenby Upton"
).split()
NAMES = (
    "Anna Ben Clara David Elena Felix Grace Henry Iris James Karen Leo Maya Noah Olivia Peter Rosa Samuel Tara "
    "Victor "
    "Alice Bruno Chloe Daniel Emma Frank Hannah Isaac Julia Kevin Laura Martin Nina Oscar Paula Ruth Simon Tom Una "
    "Walter"
).split()
TIMES = (
    "in the morning",
    "after the storm",
    "before the winter",
    "during the festival",
    "at noon",
    "in early spring",
    "late at night",
    "every autumn",
    "after lunch",
    "before sunrise",
    "on a cold evening",
    "last summer",
    "by evening",
    "within an hour",
    "on market day",
    "after the long rain",
    "at the first light",
    "before the guests arrived",
    "in the late afternoon",
    "over the holidays",
)
NUMBERS = "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty".split()

SLOTS = {
    "A": ADJECTIVES,
    "N": NOUNS,
    "Ns": PLURALS,
    "V": VERBS,
    "Vd": PAST,
    "P": PLACES,
    "Name": NAMES,
    "T": TIMES,
    "Num": NUMBERS,
}

TEMPLATES = (
    "The {A} {N} in {P} {Vd} the {A} {N} {T}.",
    "{Name} and {Name} {Vd} {Num} {Ns} near the {N} of {P}.",
    "Many {Ns} have to {V} the {N} with {A} {Ns}.",
    "{Name} said the {N} of {P} was {A} and {A}.",
    "{Name} wanted to {V} a {A} {N} for the {Ns} {T}.",
    "When the {Ns} {Vd} the {N}, {Name} {Vd} {Num} {A} {Ns}.",
    "People from {P} often {V} their {Ns} with {A} care.",
    "The {Ns} that {Name} {Vd} were {A}, so the {N} stayed {A}.",
    "{T}, the {A} {Ns} of {P} {Vd} a {N} together.",
    "Nobody in {P} could {V} the {N} that the {Ns} had {Vd}.",
    "A {A} {N} helps {Name} {V} {Num} {Ns} in {P}.",
    "Every {N} in {P} {Vd} {Num} {Ns} and {Num} {Ns}.",
)
