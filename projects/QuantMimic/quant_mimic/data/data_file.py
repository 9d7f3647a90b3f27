"""Your data in one file: a small YAML that names the train and val sets (COCO json, VOC xml, WIDER
FACE) and the classes, read by every entry point (``--data FILE``; docs/YOUR_DATA.md).

    # my_data.yaml: relative paths are relative to this file
    names: [car, person, dog]          # optional for COCO ("categories") and VOC (the xml names)
    train:                             # one set, or a list of sets (concatenated)
      coco: annotations/instances_train.json
      images: images/train
    val:
      voc: VOCdevkit/MyVOC             # Annotations/, JPEGImages/ (any extension), ImageSets/Main/
      split: val

A set is one of ``coco: JSON`` with ``images: FOLDER``; ``voc: ROOT`` with ``split`` (default: the
role, "train" or "val") and ``year`` (2007, default: VOC07 11-point AP as the main metric, area AP
beside it; 2012: the reverse); ``widerface: ROOT`` (the official layout, ``split`` as for VOC).

:func:`register_data_file` registers the sets with detectron2 (``DatasetCatalog`` /
``MetadataCatalog``, COCO through detectron2's ``load_coco_json``) under names derived from the
file, with class ids from ``names`` whatever a json's category ids are. Every problem is an error
naming the file and what is wrong, raised before anything is trained or written.
"""

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..errors import ConfigError
from .voc import load_voc_instances, read_split_ids
from .widerface import register_widerface

__all__ = [
    "DataFileError",
    "DataSet",
    "DataSpec",
    "read_data_file",
    "register_data_file",
    "RegisteredData",
    "NUM_CLASSES_KEYS",
    "num_classes_key",
    "num_classes",
    "set_num_classes",
    "apply_data_file",
    "check_num_classes",
    "data_opts",
]

logger = logging.getLogger(__name__)

KINDS = ("coco", "voc", "widerface")
SET_KEYS = {"coco": {"coco", "images"}, "voc": {"voc", "split", "year"}}
SET_KEYS["widerface"] = {"widerface", "split"}


FORMAT_HINT = "the data file's format is in docs/YOUR_DATA.md"


class DataFileError(ConfigError):
    """A data file that cannot be used (a user error, :mod:`quant_mimic.errors`): the file, what is
    wrong, how to fix it."""


@dataclass
class DataSet:
    """One set of a data file: ``kind`` "coco" | "voc" | "widerface", its files (absolute)."""

    kind: str
    path: str  # the COCO json, the VOC root or the WIDER FACE root
    images: str = ""  # COCO: the image folder
    split: str = ""  # VOC / WIDER FACE
    year: int = 2007  # VOC: which AP is the main metric


@dataclass
class DataSpec:
    """A read and checked data file."""

    path: str
    names: List[str]
    train: List[DataSet]
    val: DataSet
    coco_categories: Dict[str, Dict[int, str]] = field(default_factory=dict)  # json -> {id: name}


def _fail(path: str, what: str, fix: str = FORMAT_HINT):
    raise DataFileError(path, what, fix)


def _read_coco_categories(data_file: str, json_file: str) -> Dict[int, str]:
    """{category id: name} of a COCO json, after checking that it is one: ``images``,
    ``annotations`` and ``categories`` lists, every annotation's category among the categories."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        _fail(data_file, f"{json_file} is not readable JSON ({e})")
    if not isinstance(data, dict):
        _fail(data_file, f"{json_file} is not a COCO json (no top-level object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(data_file, f"{json_file} is not a COCO instances json: no {key!r} list")
    cats = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            _fail(data_file, f"{json_file}: a category without an id or a name: {c!r}")
        cats[int(c["id"])] = str(c["name"])
    if len(set(cats.values())) != len(cats):
        _fail(data_file, f"{json_file}: category names repeat: {sorted(cats.values())}")
    unknown = sorted({a.get("category_id") for a in data["annotations"]} - set(cats))
    if unknown:
        _fail(
            data_file,
            f"{json_file}: annotations use category id(s) {unknown[:10]} that 'categories' does "
            f"not list (it lists {sorted(cats)})",
        )
    return cats


def _voc_class_names(data_file: str, root: str, split: str) -> List[str]:
    """The object names of a VOC split's xml files (for a data file without ``names``)."""
    names = set()
    for fileid in read_split_ids(root, split):
        anno = os.path.join(root, "Annotations", fileid + ".xml")
        if not os.path.isfile(anno):
            _fail(
                data_file,
                f"{os.path.join(root, 'ImageSets', 'Main', split + '.txt')} names image "
                f"{fileid!r}, which has no annotation {anno}",
            )
        try:
            tree = ET.parse(anno)
        except ET.ParseError as e:
            _fail(data_file, f"{anno}: malformed xml ({e})")
        for obj in tree.findall("object"):
            name = obj.findtext("name")
            if name and name.strip():
                names.add(name.strip())
    return sorted(names)


def _read_set(data_file: str, role: str, index: Optional[int], entry) -> DataSet:
    where = f"{role}" + (f"[{index}]" if index is not None else "")
    if not isinstance(entry, dict):
        _fail(data_file, f"{where} must be a mapping such as {{coco: FILE, images: DIR}}")
    kinds = [k for k in KINDS if k in entry]
    if len(kinds) != 1:
        _fail(data_file, f"{where} must name exactly one of {list(KINDS)}, got {sorted(entry)}")
    kind = kinds[0]
    extra = set(entry) - SET_KEYS[kind]
    if extra:
        _fail(data_file, f"{where}: unknown key(s) {sorted(extra)} for a {kind} set")
    base = os.path.dirname(os.path.abspath(data_file))

    def resolve(key):
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip():
            _fail(data_file, f"{where}.{key} must be a path")
        path = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        if not os.path.exists(path):
            _fail(data_file, f"{where}.{key}: {path} does not exist")
        return path

    if kind == "coco":
        if "images" not in entry:
            _fail(data_file, f"{where}: a coco set needs 'images: FOLDER' beside 'coco: FILE'")
        ds = DataSet("coco", resolve("coco"), images=resolve("images"))
        if not os.path.isfile(ds.path):
            _fail(data_file, f"{where}.coco: {ds.path} is not a file")
        return ds
    split = str(entry.get("split", role))
    root = resolve(kind)
    if kind == "voc":
        year = entry.get("year", 2007)
        if year not in (2007, 2012):
            _fail(data_file, f"{where}.year must be 2007 (11-point AP) or 2012 (area AP)")
        split_file = os.path.join(root, "ImageSets", "Main", split + ".txt")
        if not os.path.isfile(split_file):
            _fail(data_file, f"{where}: the VOC split file {split_file} does not exist")
        return DataSet("voc", root, split=split, year=int(year))
    if split not in ("train", "val", "test"):
        _fail(data_file, f"{where}.split must be train, val or test for WIDER FACE, got {split!r}")
    return DataSet("widerface", root, split=split)


def read_data_file(path: str) -> DataSpec:
    """
    Read and check a data file (module docstring): its sets exist, COCO jsons are COCO, class
    names agree. Raises :class:`DataFileError` naming the file and the problem.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DataFileError(path, "the data file does not exist", "check the path given to --data")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        _fail(path, f"not valid YAML ({e})")
    if not isinstance(raw, dict):
        _fail(path, "must be a mapping with 'train' and 'val' (and optionally 'names')")
    missing = [k for k in ("train", "val") if not raw.get(k)]
    if missing:
        _fail(path, f"no {' and no '.join(repr(k) for k in missing)} set")
    unknown = set(raw) - {"names", "train", "val"}
    if unknown:
        _fail(path, f"unknown top-level key(s) {sorted(unknown)}; use names, train, val")
    train_raw = raw["train"] if isinstance(raw["train"], list) else [raw["train"]]
    multi = isinstance(raw["train"], list)
    train = [_read_set(path, "train", i if multi else None, t) for i, t in enumerate(train_raw)]
    if isinstance(raw["val"], list):
        _fail(path, "val must be one set (the one that is evaluated)")
    val = _read_set(path, "val", None, raw["val"])
    names = raw.get("names")
    if names is not None:
        if not isinstance(names, list) or not names:
            _fail(path, "names must be a non-empty list of class names")
        names = [str(n).strip() for n in names]
        if any(not n for n in names) or len(set(names)) != len(names):
            _fail(path, f"names must be distinct and non-empty, got {names}")
    sets = train + [val]
    coco = {s.path: _read_coco_categories(path, s.path) for s in sets if s.kind == "coco"}
    defined: Dict[str, List[str]] = {}  # a COCO json's categories: exactly the classes
    used: Dict[str, List[str]] = {}  # the object names of a VOC split: some of the classes
    for s in sets:
        if s.kind == "coco":
            defined[s.path] = [n for _, n in sorted(coco[s.path].items())]
        elif s.kind == "widerface":
            defined[os.path.join(s.path, s.split)] = ["face"]
        elif names is None:
            used[os.path.join(s.path, "ImageSets", "Main", s.split + ".txt")] = _voc_class_names(
                path, s.path, s.split
            )
    if names is None:  # a json's category order (by id), else the VOC names sorted
        names = next(iter(defined.values()), None) or sorted(set().union(*used.values()))
        if not names:
            _fail(path, "no class found: add 'names: [...]'")
    for where, classes in defined.items():
        if set(classes) != set(names):
            _fail(path, f"the classes of {where}, {classes}, disagree with names {names}")
    for where, classes in used.items():
        if not set(classes) <= set(names):
            _fail(path, f"{where} has objects of {sorted(set(classes) - set(names))}, not in names")
    return DataSpec(path, names, train, val, coco)


@dataclass
class RegisteredData:
    """What :func:`register_data_file` registered: dataset names and the classes."""

    train: List[str]
    val: str
    names: List[str]


def _dataset_prefix(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:6]
    return f"data_{stem}_{digest}"


def _register_coco(name: str, ds: DataSet, names: List[str], categories: Dict[int, str]) -> None:
    to_index = {cid: names.index(cname) for cid, cname in categories.items()}

    def load():
        dicts = load_coco_json(ds.path, ds.images)  # json category ids, as written
        for d in dicts:
            for a in d.get("annotations", ()):
                a["category_id"] = to_index[a["category_id"]]
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(names),
        thing_dataset_id_to_contiguous_id=to_index,
        json_file=ds.path,
        image_root=ds.images,
        evaluator_type="coco",
    )


def register_data_file(path: str) -> RegisteredData:
    """
    Register the sets of a data file (:func:`read_data_file`) with detectron2, once per process
    (again when the file changed): ``data_<stem>_<hash>_train<i>`` and ``..._val``. COCO sets
    evaluate with detectron2's ``COCOEvaluator``, VOC sets with the project's VOC evaluator on the
    dicts the loader read, WIDER FACE sets with the official protocol.
    """
    spec = read_data_file(path)
    prefix = _dataset_prefix(spec.path)
    roles = [(f"{prefix}_train{i}", s) for i, s in enumerate(spec.train)]
    roles.append((f"{prefix}_val", spec.val))
    for name, ds in roles:
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("thing_classes") == list(spec.names):
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if ds.kind == "coco":
            _register_coco(name, ds, spec.names, spec.coco_categories[ds.path])
        elif ds.kind == "voc":
            names = list(spec.names)
            root, split = ds.path, ds.split
            DatasetCatalog.register(name, lambda r=root, s=split: load_voc_instances(r, s, names))
            MetadataCatalog.get(name).set(
                thing_classes=names,
                dirname=root,
                year=ds.year,
                split=split,
                evaluator_type="pascal_voc",
            )
        else:
            register_widerface(name, ds.path, ds.split)
        MetadataCatalog.get(name).set(data_file=spec.path)
    logger.info(
        f"Data file {spec.path}: {len(spec.names)} classes {spec.names}; train "
        f"{[n for n, _ in roles[:-1]]}, val {roles[-1][0]}"
    )
    return RegisteredData([n for n, _ in roles[:-1]], roles[-1][0], list(spec.names))


# Every head's class count (C) that a data file sets; the first that applies to the meta
# architecture is the one checked against a dataset's classes.
NUM_CLASSES_KEYS = (
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.RETINANET.NUM_CLASSES",
    "MODEL.FCOS.NUM_CLASSES",
)


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return None
        node = node[part]
    return node


def _set(cfg, key: str, value) -> None:
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def num_classes_key(cfg) -> str:
    """The config key holding the detector's class count (by ``MODEL.META_ARCHITECTURE``)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if "RetinaNet" in arch:  # RetinaNet, MimicRetinaNet
        return "MODEL.RETINANET.NUM_CLASSES"
    if "FCOS" in arch and _get(cfg, "MODEL.FCOS.NUM_CLASSES") is not None:
        return "MODEL.FCOS.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def num_classes(cfg) -> int:
    """The detector's class count C."""
    return int(_get(cfg, num_classes_key(cfg)))


def set_num_classes(cfg, n: int) -> None:
    """Set every head's class count present in ``cfg`` (:data:`NUM_CLASSES_KEYS`) to ``n``."""
    for key in NUM_CLASSES_KEYS:
        if _get(cfg, key) is not None:
            _set(cfg, key, int(n))


def apply_data_file(cfg) -> Optional[RegisteredData]:
    """
    With ``DATASETS.DATA_FILE`` set: register its sets, make the path absolute, set
    ``DATASETS.TRAIN`` / ``DATASETS.TEST`` to them and every head's class count to its names.
    ``cfg`` must be mutable. Returns what was registered (None without a data file).
    """
    if not cfg.DATASETS.DATA_FILE:
        return None
    cfg.DATASETS.DATA_FILE = os.path.abspath(os.path.expanduser(cfg.DATASETS.DATA_FILE))
    reg = register_data_file(cfg.DATASETS.DATA_FILE)
    cfg.DATASETS.TRAIN = tuple(reg.train)
    cfg.DATASETS.TEST = (reg.val,)
    set_num_classes(cfg, len(reg.names))
    return reg


def check_num_classes(cfg) -> None:
    """
    Every registered dataset of ``DATASETS.TRAIN`` / ``TEST`` whose ``thing_classes`` count
    differs from the detector's class count is an error naming the dataset, its count, the config
    key and its value (a wrong count trains a head of the wrong width without a word, or fails at
    the first step with an index error).
    """
    key = num_classes_key(cfg)
    value = _get(cfg, key)
    if value is None:
        return
    registered = set(DatasetCatalog.list())
    for role in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[role]:
            if name not in registered:
                continue
            classes = MetadataCatalog.get(name).get("thing_classes")
            if classes is not None and len(classes) != int(value):
                where = MetadataCatalog.get(name).get("data_file", "")  # "": the config's name
                raise ConfigError(
                    where,
                    f"DATASETS.{role} {name!r} has {len(classes)} classes "
                    f"{list(classes)[:10]}{' …' if len(classes) > 10 else ''}, but {key} = {value}",
                    f"set {key} {len(classes)}, or give the data with --data FILE, which sets it "
                    "from the data's names (docs/YOUR_DATA.md)",
                )


def data_opts(data_file: str) -> List[str]:
    """``KEY VALUE`` overrides for ``--data FILE`` (empty when none is given)."""
    return (
        ["DATASETS.DATA_FILE", os.path.abspath(os.path.expanduser(data_file))] if data_file else []
    )
