"""Identity attributes of the synthetic pedestrians and their captions in en, ch, fr and de.

A caption is planned once (which attributes, in which order, which wording variant) and
then written in every language from that plan, so the four files are translations of
each other entry by entry, like the LLM-translated multilingual benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANGS = ("en", "ch", "fr", "de")
CAPTIONS_PER_IMAGE = 2

# name -> RGB, English, Chinese, French (m sg, f sg, m pl, f pl), German stem (None = indeclinable)
COLOURS: dict[str, tuple[tuple[int, int, int], str, str, tuple[str, str, str, str], str, bool]] = {
    "black": ((25, 25, 28), "black", "黑色", ("noir", "noire", "noirs", "noires"), "schwarz", True),
    "white": ((235, 235, 232), "white", "白色", ("blanc", "blanche", "blancs", "blanches"), "weiß", True),
    "gray": ((128, 128, 130), "gray", "灰色", ("gris", "grise", "gris", "grises"), "grau", True),
    "red": ((200, 30, 35), "red", "红色", ("rouge", "rouge", "rouges", "rouges"), "rot", True),
    "blue": ((35, 70, 200), "blue", "蓝色", ("bleu", "bleue", "bleus", "bleues"), "blau", True),
    "green": ((40, 150, 60), "green", "绿色", ("vert", "verte", "verts", "vertes"), "grün", True),
    "yellow": ((235, 205, 40), "yellow", "黄色", ("jaune", "jaune", "jaunes", "jaunes"), "gelb", True),
    "pink": ((240, 140, 180), "pink", "粉色", ("rose", "rose", "roses", "roses"), "rosa", False),
    "purple": ((120, 50, 150), "purple", "紫色", ("violet", "violette", "violets", "violettes"), "lila", False),
    "orange": ((240, 130, 30), "orange", "橙色", ("orange", "orange", "orange", "orange"), "orangefarben", True),
    "brown": ((110, 70, 40), "brown", "棕色", ("marron", "marron", "marron", "marron"), "braun", True),
}
HAIR_COLOURS: dict[str, tuple[tuple[int, int, int], str, str, str, str]] = {
    # RGB, en, ch, fr (m pl), de (plural adjective)
    "black": ((20, 18, 18), "black", "黑色", "noirs", "schwarze"),
    "brown": ((90, 55, 30), "brown", "棕色", "bruns", "braune"),
    "blonde": ((225, 195, 110), "blonde", "金色", "blonds", "blonde"),
    "gray": ((160, 160, 160), "gray", "灰色", "gris", "graue"),
    "red": ((170, 60, 25), "red", "红色", "roux", "rote"),
}
HAIR_STYLES = ("short", "long", "ponytail", "curly")
UPPERS = ("tshirt", "shirt", "jacket", "sweater", "coat")
PATTERNS = ("plain", "striped", "checked")
LOWERS = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag", "shoulder_bag")
HATS = ("none", "cap", "beanie", "sunhat")
OBJECTS = ("none", "umbrella", "phone", "bottle", "book")
BUILDS = ("slim", "average", "heavy")
GENDERS = ("man", "woman")
SKINS = ((241, 204, 178), (224, 172, 135), (198, 140, 100), (150, 100, 70), (100, 66, 45))


@dataclass(frozen=True)
class Identity:
    """Everything that stays the same across the images of one person."""
    gender: str
    build: str
    skin: int
    hair_style: str
    hair_colour: str
    upper: str
    upper_colour: str
    pattern: str
    lower: str
    lower_colour: str
    shoes_colour: str
    bag: str
    bag_colour: str
    hat: str
    hat_colour: str
    obj: str


def _uniform(options: tuple | dict) -> tuple[float, ...]:
    """Equal probabilities over ``options`` (drawn as the generator drew them before mixes)."""
    return (1 / len(options),) * len(options)


@dataclass(frozen=True)
class Mix:
    """How often ``sample_identity`` draws each attribute value: one row of probabilities per attribute,
    aligned with its vocabulary (``GENDERS``, ``BUILDS``, ...). Mixes share the vocabulary, so every
    caption word of one is known to a tokenizer trained on another; only the frequencies shift.

    ``colour`` is shared by the upper, lower, shoes, bag and hat colours; ``hair_style`` and ``lower``
    have a row per gender (a man's skirt stays at 0). A uniform row is drawn without probabilities
    (``rng.choice(n)``), as the generator always drew it: the same seed keeps giving the same people.
    """
    gender: tuple[float, ...]
    build: tuple[float, ...]
    skin: tuple[float, ...]
    hair_style: dict[str, tuple[float, ...]]
    hair_colour: tuple[float, ...]
    upper: tuple[float, ...]
    colour: tuple[float, ...]
    pattern: tuple[float, ...]
    lower: dict[str, tuple[float, ...]]
    bag: tuple[float, ...]
    hat: tuple[float, ...]
    obj: tuple[float, ...]


MIXES: dict[str, Mix] = {
    # the mix of every dataset generated before mixes existed (and still of ``--mix default``)
    "default": Mix(
        gender=_uniform(GENDERS), build=_uniform(BUILDS), skin=_uniform(SKINS),
        hair_style={"man": (0.55, 0.15, 0.05, 0.25), "woman": (0.15, 0.45, 0.3, 0.1)},
        hair_colour=(0.4, 0.25, 0.15, 0.12, 0.08), upper=_uniform(UPPERS), colour=_uniform(COLOURS),
        pattern=(0.6, 0.2, 0.2), lower={"man": (0.75, 0.25, 0.0), "woman": (0.5, 0.2, 0.3)},
        bag=(0.35, 0.3, 0.2, 0.15), hat=(0.6, 0.2, 0.1, 0.1), obj=(0.55, 0.1, 0.15, 0.1, 0.1)),
    # another population for cross-dataset transfer: more women, heavier builds, darker skins,
    # blonde and curly hair, coats and jackets, patterns, shorts and skirts, bags, hats and objects;
    # colours skewed (red, green, yellow common; black, gray, white rare)
    "shifted": Mix(
        gender=(0.35, 0.65), build=(0.2, 0.3, 0.5), skin=(0.1, 0.15, 0.2, 0.25, 0.3),
        hair_style={"man": (0.3, 0.3, 0.1, 0.3), "woman": (0.35, 0.15, 0.15, 0.35)},
        hair_colour=(0.15, 0.2, 0.35, 0.2, 0.1), upper=(0.1, 0.1, 0.35, 0.1, 0.35),
        # black white gray red blue green yellow pink purple orange brown
        colour=(0.03, 0.04, 0.03, 0.25, 0.05, 0.18, 0.12, 0.07, 0.08, 0.1, 0.05),
        pattern=(0.3, 0.35, 0.35), lower={"man": (0.4, 0.6, 0.0), "woman": (0.2, 0.3, 0.5)},
        bag=(0.1, 0.3, 0.3, 0.3), hat=(0.3, 0.3, 0.2, 0.2), obj=(0.2, 0.3, 0.2, 0.15, 0.15)),
}


def sample_identity(rng: np.random.Generator, mix: Mix = MIXES["default"]) -> Identity:
    """Draw one person's attributes from ``mix`` (skirts only for women, bags/hats/objects optional)."""
    def draw(p: tuple[float, ...]) -> int:
        return int(rng.choice(len(p)) if len(set(p)) == 1 else rng.choice(len(p), p=p))

    def pick(options: tuple | dict, p: tuple[float, ...]) -> str:
        return list(options)[draw(p)]

    gender = pick(GENDERS, mix.gender)
    return Identity(
        gender=gender, build=pick(BUILDS, mix.build), skin=draw(mix.skin),
        hair_style=pick(HAIR_STYLES, mix.hair_style[gender]), hair_colour=pick(HAIR_COLOURS, mix.hair_colour),
        upper=pick(UPPERS, mix.upper), upper_colour=pick(COLOURS, mix.colour), pattern=pick(PATTERNS, mix.pattern),
        lower=pick(LOWERS, mix.lower[gender]), lower_colour=pick(COLOURS, mix.colour),
        shoes_colour=pick(COLOURS, mix.colour), bag=pick(BAGS, mix.bag), bag_colour=pick(COLOURS, mix.colour),
        hat=pick(HATS, mix.hat), hat_colour=pick(COLOURS, mix.colour), obj=pick(OBJECTS, mix.obj))


def describable(ident: Identity) -> list[str]:
    """The attributes this person has that a caption may mention."""
    keys = ["build", "hair", "upper", "lower", "shoes"]
    keys += [k for k, v in (("bag", ident.bag), ("hat", ident.hat), ("obj", ident.obj)) if v != "none"]
    return keys


@dataclass(frozen=True)
class Plan:
    """Language-independent choices of one caption: mentioned attributes, their order, wording variant."""
    keys: tuple[str, ...]
    variant: int
    show_pattern: bool


def plan_caption(ident: Identity, rng: np.random.Generator) -> Plan:
    """Mention most (60-100%, at least three) of the attributes, in random order."""
    keys = describable(ident)
    n = max(3, int(np.ceil(len(keys) * rng.uniform(0.6, 1.0))))
    chosen = [keys[i] for i in rng.permutation(len(keys))[:n]]
    return Plan(tuple(chosen), int(rng.integers(3)), bool(rng.random() < 0.85))


def image_plans(seed: int, pid: int, ident: Identity, k: int) -> list[Plan]:
    """The caption plans of image ``k`` of person ``pid`` (a pure function of the seed)."""
    rng = np.random.default_rng([seed, 2, pid, k])
    return [plan_caption(ident, rng) for _ in range(CAPTIONS_PER_IMAGE)]


def mentioned_facets(ident: Identity, plan: Plan) -> dict[str, str]:
    """The attribute values a caption of ``plan`` states about ``ident`` (in every language alike).

    The gender is always stated (the subject); a plain pattern is never put into words, so
    the pattern counts only when shown and not plain.
    """
    facets = {"gender": ident.gender}
    fields = {"build": ("build",), "hair": ("hair_style", "hair_colour"), "upper": ("upper", "upper_colour"),
              "lower": ("lower", "lower_colour"), "shoes": ("shoes_colour",), "bag": ("bag", "bag_colour"),
              "hat": ("hat", "hat_colour"), "obj": ("obj",)}
    for key in plan.keys:
        for name in fields[key]:
            facets[name] = getattr(ident, name)
    if "upper" in plan.keys and plan.show_pattern and ident.pattern != "plain":
        facets["pattern"] = ident.pattern
    return facets


def write_caption(ident: Identity, plan: Plan, lang: str) -> str:
    """The caption of ``plan`` in ``lang``."""
    return {"en": _en, "ch": _ch, "fr": _fr, "de": _de}[lang](ident, plan)


def _join(parts: list[str], sep: str, last: str) -> str:
    return parts[0] if len(parts) == 1 else sep.join(parts[:-1]) + last + parts[-1]


# ---------------------------------------------------------------- English
_EN_UPPER = {"tshirt": "t-shirt", "shirt": "shirt", "jacket": "jacket", "sweater": "sweater", "coat": "coat"}
_EN_BAG = {"backpack": "backpack", "handbag": "handbag", "shoulder_bag": "shoulder bag"}
_EN_HAT = {"cap": "cap", "beanie": "beanie", "sunhat": "sun hat"}
_EN_OBJ = {"umbrella": "an umbrella", "phone": "a phone", "bottle": "a bottle", "book": "a book"}
_EN_BUILD = {"slim": "slim", "average": "medium-build", "heavy": "heavy-set"}


def _en(p: Identity, plan: Plan) -> str:
    v = plan.variant
    c = lambda k: COLOURS[k][1]  # noqa: E731
    hc = HAIR_COLOURS[p.hair_colour][1]
    clauses = []
    for key in plan.keys:
        if key == "hair":
            hair = {"short": f"short {hc} hair", "long": f"long {hc} hair", "curly": f"curly {hc} hair",
                    "ponytail": f"{hc} hair in a ponytail"}[p.hair_style]
            clauses.append(("has ", "has ", "wears her " if p.gender == "woman" else "has ")[v] + hair)
        elif key == "upper":
            pat = {"plain": "", "striped": "striped ", "checked": "checked "}[p.pattern] if plan.show_pattern else ""
            clauses.append(("wears", "is wearing", "is dressed in")[v] + f" a {c(p.upper_colour)} {pat}{_EN_UPPER[p.upper]}")
        elif key == "lower":
            low = {"trousers": "trousers", "shorts": "shorts", "skirt": "skirt"}[p.lower]
            art = "a " if p.lower == "skirt" else ""
            clauses.append(("wears", "has on", "is wearing")[v] + f" {art}{c(p.lower_colour)} {low}")
        elif key == "shoes":
            clauses.append(("wears", "has", "is wearing")[v] + f" {c(p.shoes_colour)} shoes")
        elif key == "bag":
            verb = "carries" if p.bag != "handbag" else ("carries", "holds", "carries")[v]
            clauses.append(f"{verb} a {c(p.bag_colour)} {_EN_BAG[p.bag]}")
        elif key == "hat":
            clauses.append(("wears", "has on", "is wearing")[v] + f" a {c(p.hat_colour)} {_EN_HAT[p.hat]}")
        elif key == "obj":
            clauses.append(("holds", "is holding", "carries")[v] + f" {_EN_OBJ[p.obj]} in one hand")
    build = f"{_EN_BUILD[p.build]} " if "build" in plan.keys else ""
    subject = ("A", "The", "This")[v] + f" {build}{p.gender}"
    return f"{subject} {_join(clauses, ', ', ' and ')}."


# ---------------------------------------------------------------- Chinese
_CH_UPPER = {"tshirt": "T恤", "shirt": "衬衫", "jacket": "夹克", "sweater": "毛衣", "coat": "大衣"}
_CH_LOWER = {"trousers": "长裤", "shorts": "短裤", "skirt": "裙子"}
_CH_BAG = {"backpack": "背着一个{c}双肩包", "handbag": "提着一个{c}手提包", "shoulder_bag": "挎着一个{c}单肩包"}
_CH_HAT = {"cap": "鸭舌帽", "beanie": "毛线帽", "sunhat": "遮阳帽"}
_CH_OBJ = {"umbrella": "一把雨伞", "phone": "一部手机", "bottle": "一个水瓶", "book": "一本书"}
_CH_BUILD = {"slim": "身材苗条的", "average": "中等身材的", "heavy": "身材魁梧的"}
# The words of the Chinese captions (the tables above cut at word boundaries), so that the
# tokenizer keeps them whole as xlm-roberta's SentencePiece keeps common Chinese words whole:
# a colour is one piece, as in the other languages, and a caption has ~40 % fewer pieces.
CH_WORDS: tuple[str, ...] = tuple(sorted(
    {c[2] for c in COLOURS.values()} | {c[2] for c in HAIR_COLOURS.values()} | set(_CH_UPPER.values())
    | set(_CH_LOWER.values()) | set(_CH_HAT.values())
    | {"双肩包", "手提包", "单肩包", "雨伞", "手机", "水瓶", "鞋子", "条纹", "格子", "短发", "长发", "卷发", "马尾辫",
       "留着", "扎着", "穿着", "上身", "下身", "身穿", "脚穿", "脚上", "戴着", "头戴", "戴了", "背着", "提着", "挎着",
       "手里", "手上", "拿着", "一个", "这个", "这位", "一把", "一部", "一本", "一顶", "男人", "女人", "身材", "苗条",
       "中等", "魁梧"}))


def _ch(p: Identity, plan: Plan) -> str:
    v = plan.variant
    c = lambda k: COLOURS[k][2]  # noqa: E731
    hc = HAIR_COLOURS[p.hair_colour][2]
    clauses = []
    for key in plan.keys:
        if key == "hair":
            clauses.append({"short": f"留着{hc}短发", "long": f"留着{hc}长发", "curly": f"留着{hc}卷发",
                            "ponytail": f"扎着{hc}马尾辫"}[p.hair_style])
        elif key == "upper":
            pat = {"plain": "", "striped": "条纹", "checked": "格子"}[p.pattern] if plan.show_pattern else ""
            clauses.append(("穿着", "上身穿着", "身穿")[v] + f"{c(p.upper_colour)}{pat}{_CH_UPPER[p.upper]}")
        elif key == "lower":
            clauses.append(("下身穿着", "穿着", "下身是")[v] + f"{c(p.lower_colour)}{_CH_LOWER[p.lower]}")
        elif key == "shoes":
            clauses.append(("脚穿", "穿着", "脚上是")[v] + f"{c(p.shoes_colour)}的鞋子")
        elif key == "bag":
            clauses.append(_CH_BAG[p.bag].format(c=c(p.bag_colour)))
        elif key == "hat":
            clauses.append(("戴着", "头戴", "戴了一顶")[v] + f"{c(p.hat_colour)}{_CH_HAT[p.hat]}")
        elif key == "obj":
            clauses.append(("手里拿着", "手上拿着", "拿着")[v] + _CH_OBJ[p.obj])
    noun = "男人" if p.gender == "man" else "女人"
    build = _CH_BUILD[p.build] if "build" in plan.keys else ""
    subject = ("一个", "这个", "这位")[v] + build + noun
    return f"{subject}{'，'.join(clauses)}。"


# ---------------------------------------------------------------- French
_FR_UPPER = {"tshirt": ("un t-shirt", 0), "shirt": ("une chemise", 1), "jacket": ("une veste", 1),
             "sweater": ("un pull", 0), "coat": ("un manteau", 0)}
_FR_LOWER = {"trousers": ("un pantalon", 0), "shorts": ("un short", 0), "skirt": ("une jupe", 1)}
_FR_BAG = {"backpack": ("un sac à dos", 0), "handbag": ("un sac à main", 0), "shoulder_bag": ("une sacoche", 1)}
_FR_HAT = {"cap": ("une casquette", 1), "beanie": ("un bonnet", 0), "sunhat": ("un chapeau de soleil", 0)}
_FR_OBJ = {"umbrella": "un parapluie", "phone": "un téléphone", "bottle": "une bouteille", "book": "un livre"}
_FR_BUILD = {"slim": ("mince", "mince"), "average": ("de corpulence moyenne", "de corpulence moyenne"),
             "heavy": ("corpulent", "corpulente")}


def _fr(p: Identity, plan: Plan) -> str:
    v = plan.variant
    fem = p.gender == "woman"

    def noun(entry: tuple[str, int], colour: str) -> str:
        return f"{entry[0]} {COLOURS[colour][3][entry[1]]}"

    hc = HAIR_COLOURS[p.hair_colour][3]
    clauses = []
    for key in plan.keys:
        if key == "hair":
            clauses.append({"short": f"a les cheveux courts et {hc}", "long": f"a les cheveux longs et {hc}",
                            "curly": f"a les cheveux bouclés et {hc}",
                            "ponytail": f"a les cheveux {hc} attachés en queue de cheval"}[p.hair_style])
        elif key == "upper":
            pat = {"plain": "", "striped": " à rayures", "checked": " à carreaux"}[p.pattern] if plan.show_pattern else ""
            verb = ("porte ", "est vêtue d'" if fem else "est vêtu d'", "porte ")[v]
            clauses.append(verb + noun(_FR_UPPER[p.upper], p.upper_colour) + pat)
        elif key == "lower":
            clauses.append(("porte", "a", "porte")[v] + " " + noun(_FR_LOWER[p.lower], p.lower_colour))
        elif key == "shoes":
            clauses.append(("porte", "a", "porte")[v] + f" des chaussures {COLOURS[p.shoes_colour][3][3]}")
        elif key == "bag":
            clauses.append(("porte", "a", "porte")[v] + " " + noun(_FR_BAG[p.bag], p.bag_colour))
        elif key == "hat":
            clauses.append(("porte", "a sur la tête", "porte")[v] + " " + noun(_FR_HAT[p.hat], p.hat_colour))
        elif key == "obj":
            clauses.append(("tient", "tient", "a")[v] + f" {_FR_OBJ[p.obj]} à la main")
    art = (("Un", "L'", "Cet"), ("Une", "La", "Cette"))[fem][v]
    noun_ = "femme" if fem else "homme"
    subject = f"{art}{noun_}" if art == "L'" else f"{art} {noun_}"
    if "build" in plan.keys:
        subject += " " + _FR_BUILD[p.build][fem]
    return f"{subject} {_join(clauses, ', ', ' et ')}."


# ---------------------------------------------------------------- German
_DE_UPPER = {"tshirt": ("T-Shirt", "n"), "shirt": ("Hemd", "n"), "jacket": ("Jacke", "f"),
             "sweater": ("Pullover", "m"), "coat": ("Mantel", "m")}
_DE_LOWER = {"trousers": ("Hose", "f"), "shorts": ("Shorts", "pl"), "skirt": ("Rock", "m")}
_DE_BAG = {"backpack": ("Rucksack", "m"), "handbag": ("Handtasche", "f"), "shoulder_bag": ("Umhängetasche", "f")}
_DE_HAT = {"cap": ("Kappe", "f"), "beanie": ("Mütze", "f"), "sunhat": ("Sonnenhut", "m")}
_DE_OBJ = {"umbrella": "einen Regenschirm", "phone": "ein Handy", "bottle": "eine Flasche", "book": "ein Buch"}
_DE_BUILD = {"slim": "schlank", "average": "mittelgroß", "heavy": "kräftig"}
_DE_ART = {"m": "einen ", "f": "eine ", "n": "ein ", "pl": ""}
_DE_END = {"m": "en", "f": "e", "n": "es", "pl": "e"}


def _de_np(entry: tuple[str, str], colour: str) -> str:
    """Indefinite accusative noun phrase with a declined colour adjective ("einen roten Mantel")."""
    word, gender = entry
    stem, declines = COLOURS[colour][4], COLOURS[colour][5]
    adj = stem + _DE_END[gender] if declines else stem
    return f"{_DE_ART[gender]}{adj} {word}"


def _de(p: Identity, plan: Plan) -> str:
    v = plan.variant
    hc = HAIR_COLOURS[p.hair_colour][4]
    clauses = []
    for key in plan.keys:
        if key == "hair":
            clauses.append({"short": f"hat kurze {hc} Haare", "long": f"hat lange {hc} Haare",
                            "curly": f"hat lockige {hc} Haare",
                            "ponytail": f"hat {hc} Haare, zu einem Pferdeschwanz gebunden"}[p.hair_style])
        elif key == "upper":
            pat = {"plain": "", "striped": " mit Streifen", "checked": " mit Karomuster"}[p.pattern] if plan.show_pattern else ""
            clauses.append(("trägt", "hat", "trägt")[v] + " " + _de_np(_DE_UPPER[p.upper], p.upper_colour) + pat + (" an" if v == 1 else ""))
        elif key == "lower":
            clauses.append(("trägt", "trägt", "hat")[v] + " " + _de_np(_DE_LOWER[p.lower], p.lower_colour) + (" an" if v == 2 else ""))
        elif key == "shoes":
            clauses.append("trägt " + _de_np(("Schuhe", "pl"), p.shoes_colour))
        elif key == "bag":
            clauses.append(("trägt", "hat", "trägt")[v] + " " + _de_np(_DE_BAG[p.bag], p.bag_colour) + (" dabei" if v == 1 else ""))
        elif key == "hat":
            clauses.append(("trägt", "hat", "trägt")[v] + " " + _de_np(_DE_HAT[p.hat], p.hat_colour) + (" auf" if v == 1 else ""))
        elif key == "obj":
            clauses.append(("hält", "hält", "hat")[v] + f" {_DE_OBJ[p.obj]} in der Hand")
    masc = p.gender == "man"
    noun = "Mann" if masc else "Frau"
    if "build" in plan.keys:
        adj = _DE_BUILD[p.build]
        subject = (f"Ein {adj}er {noun}" if masc else f"Eine {adj}e {noun}") if v != 1 else \
            (f"Der {adj}e {noun}" if masc else f"Die {adj}e {noun}")
    else:
        subject = (("Ein", "Der", "Dieser"), ("Eine", "Die", "Diese"))[not masc][v] + f" {noun}"
    return f"{subject} {_join(clauses, ', ', ' und ')}."
