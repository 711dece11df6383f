"""The word list shared by the tiny test tokenizers.

Every word here is a single token in all three tokenizers (CLIP, T5, Llama); any other word falls back to
several character-level pieces. Prompt-to-Prompt tests rely on both behaviours, so keep the words lower-case
ASCII letters only and keep common prompt words ("a", "cat", "red", "circle", ...) in the list.
"""

from __future__ import annotations

# Grouped by topic only to make the list easy to extend; the tokenizers sort it, so order does not matter.
_GROUPS: dict[str, str] = {
    "function": """
        a an the this that these those some any each every all no one two three four five many few
        of in on at to from with without by for into onto over under above below near far behind beside
        between around through across along against inside outside next and or but not is are was were be
        been being has have had do does did it its he she they them their his her we you i me my your our
        there here then than very more most less so as up down out off
    """,
    "colors": """
        red blue green yellow orange purple pink brown black white gray grey gold silver golden colorful
        dark light bright pale
    """,
    "shapes": """
        circle square triangle star rectangle diamond heart line dot cube sphere ball ring box cross spiral
        shape shapes pattern stripe stripes
    """,
    "sizes": "small big large tiny huge tall short long wide thin thick little giant",
    "positions": """
        left right top bottom center middle front back side corner edge upper lower foreground background
        horizon
    """,
    "animals": """
        cat cats dog dogs tiger lion bird birds fish horse cow sheep pig bear rabbit mouse fox wolf deer
        elephant monkey zebra giraffe duck owl snake frog turtle butterfly bee shark whale dolphin penguin
        panda kitten puppy animal animals
    """,
    "objects": """
        car cars bus truck train bike bicycle boat ship plane airplane house building tree trees flower
        flowers chair table cup bottle book lamp clock window door road street bridge tower castle city
        mountain mountains river lake sea ocean beach sky sun moon cloud clouds rain snow grass field forest
        garden park wall floor room kitchen bed hat shirt dress shoe shoes bag phone computer robot apple
        banana cake pizza bread food water fire stone rock sand wood paper glass metal
    """,
    "people": "man woman boy girl child person people face hand hands eye eyes hair",
    "motion": """
        moving move moves running run runs walking walk walks flying fly flies jumping jump swimming swim
        sitting sit standing stand rotating rotate spinning spin falling fall rising rise rolling roll
        bouncing bounce growing grow shrinking shrink turning turn dancing dance playing play eating eat
        looking look holding hold slowly quickly fast slow camera zoom pan
    """,
    "scene": """
        photo photograph picture image painting drawing sketch video scene view style art realistic
        cartoon detailed simple high quality sunny night day morning evening shadow shadows texture
        surface plain empty full old new beautiful happy sad wet dry hot cold soft hard smooth rough
        describe following main content theme size quantity text spatial relationships objects actions
        events physical changes environment atmosphere angles transitions used system user
    """,
}

#: Lower-case words that every test tokenizer keeps as one token, sorted and de-duplicated.
VOCABULARY: tuple[str, ...] = tuple(sorted({word for group in _GROUPS.values() for word in group.split()}))

#: Characters that get their own fallback token, so that any out-of-vocabulary word splits into pieces
#: instead of collapsing into a single unknown token.
CHARACTERS: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-_()[]{}/\\&%$#@*+=<>|~^`")
