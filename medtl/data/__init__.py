"""Dataset sources, splits, the decoded-image cache, the synthetic phantom and data cards.

Example:
    >>> from medtl.data import load_dataset, prepare_images
    >>> ds = load_dataset("chest_xray/")                   # folders, CSV manifest or MedMNIST .npz
    >>> train = prepare_images(ds.split("train"), ds.classes, size=224, cache_dir="cache/")
"""

from __future__ import annotations

from medtl.data._files import unlabelled_files
from medtl.data._ids import (
    DEFAULT_CACHE_DIR,
    ID_MAP_BANNER,
    dataset_fingerprint,
    default_salt,
    file_uid,
    hash_patient_id,
    keyed_uid,
    project_salt,
    write_id_map,
)
from medtl.data._load import (
    check_class_counts,
    compile_patient_id_pattern,
    load_dataset,
    read_with_options,
)
from medtl.data._multilabel import (
    UNCERTAIN_POLICIES,
    LabelOptions,
    finding_counts,
    iterative_carve,
    targets_of,
)
from medtl.data._prepare import (
    image_cache_dir,
    image_cache_key,
    image_entry_path,
    prepare_images,
    prepared_key,
    read_options_bytes,
    to_native_uint8,
)
from medtl.data._sources import SourceInfo, register_source, source_info
from medtl.data._splits import (
    assign_splits,
    duplicate_groups,
    load_splits,
    save_splits,
    stratified_subset,
)
from medtl.data._types import SPLITS, Dataset, PreparedImages, Sample, SkippedFile
from medtl.data.card import data_card, summarise_dataset
from medtl.data.synth import (
    PHANTOM_INFO_FILE,
    PHANTOM_MANIFEST_FILE,
    default_demo_dataset,
    is_phantom,
    make_phantom,
    phantom_manifest,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "ID_MAP_BANNER",
    "PHANTOM_INFO_FILE",
    "PHANTOM_MANIFEST_FILE",
    "SPLITS",
    "UNCERTAIN_POLICIES",
    "Dataset",
    "LabelOptions",
    "PreparedImages",
    "Sample",
    "SkippedFile",
    "SourceInfo",
    "assign_splits",
    "check_class_counts",
    "compile_patient_id_pattern",
    "data_card",
    "dataset_fingerprint",
    "default_demo_dataset",
    "default_salt",
    "duplicate_groups",
    "file_uid",
    "finding_counts",
    "hash_patient_id",
    "image_cache_dir",
    "image_cache_key",
    "image_entry_path",
    "is_phantom",
    "iterative_carve",
    "keyed_uid",
    "load_dataset",
    "load_splits",
    "make_phantom",
    "phantom_manifest",
    "prepare_images",
    "prepared_key",
    "project_salt",
    "read_options_bytes",
    "read_with_options",
    "register_source",
    "save_splits",
    "source_info",
    "stratified_subset",
    "summarise_dataset",
    "targets_of",
    "to_native_uint8",
    "unlabelled_files",
    "write_id_map",
]
