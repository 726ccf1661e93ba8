"""Anatomical label ids of the pharyngeal domain (the masks' values)."""

BACKGROUND = 0
PALATE = 1
UVULA = 2
TONSILS = 3
WALL = 4
TONGUE = 5
FOLLICLES = 6

CLASS_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    PALATE: "soft palate & palatine arches",
    UVULA: "uvula",
    TONSILS: "tonsils",
    WALL: "posterior pharyngeal wall",
    TONGUE: "tongue",
    FOLLICLES: "lymphoid follicles",
}

NUM_CLASSES = len(CLASS_NAMES)
