"""Built-in class lists of the six evaluation datasets (SPEC §5.5).

Each entry is one class line: one or more names separated by ", " (synonyms; a pixel's class
probability is the max over its names). The names are the free-text class names of the reference
evaluation configs, including the multi-name VOC background line and the person / monitor
synonyms; nothing is looked up in a fixed vocabulary, so any list of lines works the same way.
Index k of a list is label k of the dataset (after reduce_zero_label where the dataset uses it).

Every list equals the reference's official class file ``configs/<model>/cls_<dataset>.txt``
(identical for the SigLIP2, MaskCLIP and DINOv3.txt configs) line for line, character for
character: the official Context60 file ends with "wood " (trailing space), which the reference
encodes as written, while the Context59 file ends with "wood". :func:`display_name` gives the
short name shown in tables and legends.
"""
from __future__ import annotations

# The separator of names inside a class line (the reference splits on it and on nothing else).
NAME_SEPARATOR = ", "

VOC20 = (
    "aeroplane",
    "bicycle",
    "bird",
    "ship",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "table",
    "dog",
    "horse",
    "motorbike",
    "person, person in shirt, person in jeans, person in dress, person in sweater, "
    "person in skirt, person in jacket",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "television monitor, tv monitor, monitor, television, screen",
)

# Background as a line of common stuff names, then the 20 VOC objects.
VOC21 = ("sky, wall, tree, wood, grass, road, sea, river, mountain, sands, desk, bed, "
         "building, cloud, lamp, door, window, wardrobe, ceiling, shelf, curtain, stair, "
         "floor, hill, rail, fence",) + VOC20

CONTEXT59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)

# The official Context60 file: "background", the Context59 names, its last line with a trailing space.
CONTEXT60 = ("background",) + CONTEXT59[:-1] + ("wood ",)

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "trafficlight", "trafficsign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

ADE20K = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chestofdrawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pooltable", "pillow", "screendoor", "stairway", "river", "bridge", "bookcase", "blind",
    "coffeetable", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchenisland", "computer", "swivelchair", "boat", "bar", "arcademachine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "televisionreceiver", "airplane", "dirttrack", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyerbelt", "canopy", "washer", "plaything", "swimmingpool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "tradename", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "trafficlight", "tray", "ashcan", "fan",
    "pier", "crtscreen", "plate", "monitor", "bulletinboard", "shower", "radiator", "glass",
    "clock", "flag",
)

BUILTIN = {
    "voc21": VOC21,
    "voc20": VOC20,
    "context60": CONTEXT60,
    "context59": CONTEXT59,
    "cityscapes": CITYSCAPES,
    "ade20k": ADE20K,
}


def display_name(line: str) -> str:
    """Short name of a class line for tables and legends: its first name without surrounding
    spaces, or "background" for the VOC21 background line (a list of stuff names)."""
    if line == VOC21[0]:
        return "background"
    return line.split(NAME_SEPARATOR)[0].strip()
