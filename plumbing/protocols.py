"""Which videos each of the paper's settings trains and evaluates on, per dataset (paper Sec. 3, Appendix D).

A dataset is an object with `splits(cfg) -> (training Split, [evaluation Splits])`. train.DATASETS holds one entry per
dataset: the authors' datasets (their list files, shipped in splits/), a custom one (your own list files), and the
embedded world (miniworld.WORLD). Every list is checked against its folder as it is read (video_index.preflight), so
a run with missing videos stops here, before any weights are loaded.
"""
import os
from dataclasses import dataclass

import data
from plumbing import video_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
SPLITS = os.path.join(ROOT, "splits")


@dataclass
class Split:
    """One list of videos with its class names: what a DataLoader is built from."""
    name: str
    root: str
    samples: list  # [(relative path, label)]
    class_names: list

    def dataset(self, cfg, train: bool = False, num_clips: int = 1, num_crops: int = 1) -> data.VideoDataset:
        """Its clips as train.py's configuration asks: frames, input size, pixel statistics, seed, augmentation."""
        return data.VideoDataset(self.root, self.samples, num_frames=cfg.frames, train=train, input_size=cfg.input_size,
                                 num_clips=num_clips, num_crops=num_crops, norm=cfg.normalization, seed=cfg.seed,
                                 augment=cfg.augment)


def load_split(name: str, root: str, list_path: str, labels_path: str) -> Split:
    """A list file and its labels, every listed video found under root (by its path, or by its file name in any
    folder of the download) or a one-line DatasetError; the samples point at the files found."""
    class_names = data.read_labels(labels_path)
    samples, _ = video_index.preflight(root, data.read_list(list_path, len(class_names)), list_path)
    return Split(name, root, samples, class_names)


def check_root(root: str, flag: str, what: str):
    if not root:
        raise ValueError(f"{flag} is required for {what} (the folder holding its videos)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{flag} {root}: no such folder ({what})")


def kshot(train: Split, cfg) -> Split:
    """K videos per class, drawn with seed --split (few-shot setting)."""
    return Split(train.name, train.root, data.kshot_split(train.samples, cfg.k, seed=cfg.split), train.class_names)


def base_novel(train: Split, val: Split, cfg) -> tuple:
    """The paper's base/novel split of a dataset with no official one: the most frequent half of the classes is base,
    K shots (16 in the paper) of each base class (seeded by --split) for training, the validation list split by
    class."""
    base_train, _, base_names, novel_names = data.base_novel_split(train.samples, train.class_names)
    base_val, novel_val, _, _ = data.base_novel_split(val.samples, val.class_names, base_names=base_names,
                                                      novel_names=novel_names)
    base_train = data.kshot_split(base_train, cfg.k, seed=cfg.split)
    return (Split("base train", train.root, base_train, base_names),
            [Split("base", val.root, base_val, base_names), Split("novel", val.root, novel_val, novel_names)])


def _list_file(*parts) -> str:
    path = os.path.join(SPLITS, "datasets_splits", *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: split list not found" + (
            " (the Kinetics-400 training lists are not shipped: python -m tools.kinetics_lists ANNOTATIONS.csv ROOT "
            "writes them)" if "k400" in path else ""))
    return path


def _labels_file(name: str) -> str:
    return os.path.join(SPLITS, "labels", name)


@dataclass
class AuthorsDataset:
    """One of the paper's datasets with the authors' list files (splits/datasets_splits/<folder>/ and
    base2novel_splits/<folder>/): val is the validation list ({split} = 1..3), fewshot the K-shot training lists,
    train the full training list (Kinetics-400 only: zero-shot source, fully supervised)."""
    folder: str
    labels: str
    base_labels: str
    novel_labels: str
    val: str
    fewshot: str = ""
    train: str = ""
    targets: str = ""  # zero-shot: the default target datasets when this one is the source

    def splits(self, cfg) -> tuple:
        check_root(cfg.data_root, "--data-root", cfg.dataset)
        if cfg.setting == "base2novel":  # the authors' base/novel lists: 16-shot base training, base and novel val
            folder = os.path.join("base2novel_splits", self.folder)
            return (load_split("base train", cfg.data_root, _list_file(folder, f"fs_base_s{cfg.split}_train.txt"),
                               _labels_file(self.base_labels)),
                    [load_split("base", cfg.data_root, _list_file(folder, "base_val.txt"),
                                _labels_file(self.base_labels)),
                     load_split("novel", cfg.data_root, _list_file(folder, "novel_val.txt"),
                                _labels_file(self.novel_labels))])
        val = load_split("val", cfg.data_root, _list_file(self.folder, self.val.format(split=cfg.split)),
                         _labels_file(self.labels))
        if cfg.setting == "fewshot":
            if not self.fewshot:
                raise ValueError(f"the paper's few-shot protocol has no {cfg.dataset} split (hmdb51, ucf101, ssv2)")
            train_file = _list_file(self.folder, self.fewshot.format(k=cfg.k))
        elif not self.train:
            raise ValueError(f"--setting {cfg.setting} trains on Kinetics-400 in the paper; {cfg.dataset} has no full "
                             f"training list here")
        else:
            train_file = _list_file(self.folder, self.train)
        train = load_split("train", cfg.data_root, train_file, _labels_file(self.labels))
        if cfg.setting == "zeroshot":
            return train, zeroshot_targets(cfg.targets or self.targets, cfg.target_roots)
        return train, [val]

    def zeroshot_splits(self, name: str, root: str) -> list:
        """This dataset as a zero-shot target: its three validation splits."""
        return [load_split(f"{name}/{s}", root, _list_file(self.folder, self.val.format(split=s)),
                           _labels_file(self.labels)) for s in (1, 2, 3)]


class Kinetics600:
    """Kinetics-600 is a zero-shot target only: three splits of the 160 classes each that Kinetics-400 lacks."""

    def splits(self, cfg):
        raise ValueError("Kinetics-600 is a zero-shot target only: use --setting zeroshot --dataset k400 "
                         "--targets k600 (or hmdb51,ucf101,k600)")

    def zeroshot_splits(self, name: str, root: str) -> list:
        return [load_split(f"{name}/{s}", root, _list_file("k600_splits", f"ZS_split{s}_K600_eval.txt"),
                           _labels_file(f"ZS_split{s}_K600.csv")) for s in (1, 2, 3)]


class CustomDataset:
    """Your own videos: --data-root, --train-list, --val-list and --labels (the authors' file formats)."""

    def splits(self, cfg) -> tuple:
        check_root(cfg.data_root, "--data-root", "a custom dataset")
        for flag in ("train_list", "val_list", "labels"):
            if not getattr(cfg, flag):
                raise ValueError(f"--dataset custom needs --{flag.replace('_', '-')}")
        train = load_split("train", cfg.data_root, cfg.train_list, cfg.labels)
        val = load_split("val", cfg.data_root, cfg.val_list, cfg.labels)
        if cfg.setting == "base2novel":
            return base_novel(train, val, cfg)
        return (kshot(train, cfg) if cfg.setting == "fewshot" else train), [val]


TARGETS = {  # the zero-shot target datasets of Table 1
    "hmdb51": AuthorsDataset("hmdb_splits", "hmdb_51_labels.csv", "hmdb_51_base_labels.csv",
                             "hmdb_51_novel_labels.csv", val="val{split}.txt", fewshot="train1_few_shot_{k}.txt"),
    "ucf101": AuthorsDataset("ucf_splits", "ucf_101_labels.csv", "ucf_101_base_labels.csv", "ucf_101_novel_labels.csv",
                             val="val{split}.txt", fewshot="train1_few_shot_{k}.txt"),
    "k600": Kinetics600(),
}
PAPER_DATASETS = dict(
    TARGETS,
    ssv2=AuthorsDataset("ssv2_splits", "ssv2_labels.csv", "ssv2_174_base_labels.csv", "ssv2_174_novel_labels.csv",
                        val="validation.txt", fewshot="train1_few_shot_{k}.txt"),
    k400=AuthorsDataset("k400_splits", "kinetics_400_labels.csv", "kinetics_400_base_labels.csv",
                        "kinetics_400_novel_labels.csv", val="val.txt", train="train.txt", targets="hmdb51,ucf101,k600"),
    custom=CustomDataset(),
)


def zeroshot_targets(names: str, roots: str) -> list:
    """Each target's three splits (HMDB-51/UCF-101: val1-3; Kinetics-600: the 3 x 160 classes not in K-400), each
    target's videos in its own folder (--target-roots, in the order of --targets)."""
    names, roots = names.split(","), roots.split(",") if roots else []
    if len(roots) != len(names):
        raise ValueError(f"--target-roots needs one video folder per target ({','.join(names)}), got {len(roots)}")
    splits = []
    for name, root in zip(names, roots):
        if name not in TARGETS:
            raise ValueError(f"--targets: unknown zero-shot target {name!r} ({', '.join(TARGETS)})")
        check_root(root, "--target-roots", f"zero-shot target {name}")
        splits += TARGETS[name].zeroshot_splits(name, root)
    return splits
