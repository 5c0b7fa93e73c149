"""Datasets: generate the probe world, import Broden and PASCAL-Part directories, register them.

Every dataset UnitScope uses is a Broden-format directory (PASCAL-Part is converted on import). The
database holds what people query: the dataset, its concepts with category and statistics, its images
with split and (where one exists) object class, and object/part boxes. Registration is all or nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from analysis import params as p
from analysis.jobs import DEFAULT_QUEUE, GPU_QUEUE, JobKind, register_job_kind
from analysis.models import AnnotatedBox, Concept, Dataset, DatasetImage, DatasetKind, Run
from analysis.storage import publish_as

from .runs import RunInputError, RunProgress, params_hash, run_start

PROBE_WORLD_PARAMS = p.ParamSchema(
    {
        "name": p.name("probe-world", slug=True, help="dataset name to register"),
        "n_images": p.integers(10, 1_000_000, 3000),
        "seed": p.seed(),
        "size": p.integers(32, 1024, 112, help="image side in pixels"),
    }
)
PROBE_WORLD_DEFAULTS = PROBE_WORLD_PARAMS.defaults
_IMPORT_FIELDS = {
    "path": p.Param(str, max_length=500, help="the directory on the server"),
    "name": p.name(slug=True, help="dataset name to register"),
}
BRODEN_IMPORT_PARAMS = p.ParamSchema(_IMPORT_FIELDS)
PASCAL_PART_IMPORT_PARAMS = p.ParamSchema(
    {
        **_IMPORT_FIELDS,
        "images": p.Param(
            str, "", max_length=500, blank=True, help="the VOC JPEGImages directory (empty: beside the annotations)"
        ),
    }
)


def datasets_dir() -> Path:
    return settings.UNITSCOPE_DATA_DIR / "datasets"


def _check_new_name(name: str) -> None:
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_slug

    try:
        validate_slug(name)
    except ValidationError:
        raise RunInputError(f"{name!r} is not a valid dataset name: use letters, digits, '-' and '_'.") from None
    if Dataset.objects.filter(name=name).exists():
        raise RunInputError(f"A dataset named {name!r} already exists.")


# -- registration ------------------------------------------------------------------------------------


def dataset_register(
    *,
    name: str,
    kind: str,
    root: Path,
    source_dir: str = "",
    description: str = "",
    params: dict[str, Any] | None = None,
    run: Run | None = None,
    progress: RunProgress | None = None,
) -> Dataset:
    """Validate the Broden directory ``root`` and register it with its concepts, images and boxes.

    Two streaming passes (validation, then label statistics); then one transaction writes every row,
    so a failure leaves nothing behind.
    """
    from analysis.engine.broden import BrodenFormatError, BrodenReader
    from analysis.engine.sidecars import BOXES_FILE, CLASSES_FILE, SidecarFormatError, read_boxes, read_classes

    _check_new_name(name)
    try:
        reader = BrodenReader(root)
        if progress:
            progress.phase("Validating the dataset", total=reader.count_rows())
        reader.validate(progress)
        if progress:
            progress.phase("Counting labels", total=reader.count_rows())
        statistics = reader.label_statistics(progress)
        classes = read_classes(root) if (root / CLASSES_FILE).exists() else {}
        boxes = list(read_boxes(root)) if (root / BOXES_FILE).exists() else []
    except (BrodenFormatError, SidecarFormatError) as error:
        raise RunInputError(str(error)) from None

    # workers on other machines read it from the artifact store (uploaded there first when one is configured)
    root_dir = publish_as(root, f"datasets/{name}")
    if progress:
        progress.phase("Registering images and concepts", total=reader.count_rows())
    with transaction.atomic():
        dataset = Dataset.objects.create(
            name=name,
            kind=kind,
            root_dir=root_dir,
            source_dir=source_dir,
            description=description,
            categories=list(reader.index_categories),
            has_boxes=bool(boxes),
            has_image_classes=bool(classes),
            params=params or {},
            import_run=run,
        )
        concepts = Concept.objects.bulk_create(
            [
                Concept(
                    dataset=dataset,
                    number=number,
                    name=label.name,
                    category=reader.primary_category(number) or (label.categories[0] if label.categories else ""),
                    categories=dict(statistics[number].category_image_counts),
                    image_count=statistics[number].image_count,
                    pixel_count=sum(statistics[number].category_pixel_counts.values()),
                    coverage=(
                        statistics[number].coverage / statistics[number].image_count
                        if statistics[number].image_count
                        else 0.0
                    ),
                )
                for number, label in sorted(reader.labels.items())
            ],
            batch_size=1000,
        )
        object_concepts = {concept.name: concept for concept in concepts if concept.category == "object"}
        any_concept = {concept.name: concept for concept in concepts}
        images: list[DatasetImage] = []
        for index, row in enumerate(reader.rows()):
            object_class = classes.get(row.image)
            if object_class is not None and object_class not in object_concepts:
                raise RunInputError(
                    f"{root / CLASSES_FILE}: class {object_class!r} of {row.image} is not an object label of label.csv"
                )
            images.append(
                DatasetImage(
                    dataset=dataset,
                    index=index,
                    path=row.image,
                    split=row.split,
                    height=row.ih,
                    width=row.iw,
                    seg_height=row.sh,
                    seg_width=row.sw,
                    object_class=object_concepts.get(object_class),
                )
            )
        DatasetImage.objects.bulk_create(images, batch_size=2000)
        image_ids = dict(DatasetImage.objects.filter(dataset=dataset).values_list("path", "pk"))
        box_rows = []
        for box in boxes:
            if box.image not in image_ids:
                raise RunInputError(f"{root / BOXES_FILE}: image {box.image!r} is not in index.csv")
            if box.label not in any_concept:
                raise RunInputError(f"{root / BOXES_FILE}: label {box.label!r} is not in label.csv")
            box_rows.append(
                AnnotatedBox(
                    image_id=image_ids[box.image],
                    kind=box.kind,
                    concept=any_concept[box.label],
                    instance=box.instance,
                    object_index=box.object,
                    x1=box.x1,
                    y1=box.y1,
                    x2=box.x2,
                    y2=box.y2,
                )
            )
        AnnotatedBox.objects.bulk_create(box_rows, batch_size=5000)
        dataset.image_count = len(images)
        dataset.train_count = sum(image.split == "train" for image in images)
        dataset.val_count = sum(image.split == "val" for image in images)
        dataset.save(update_fields=["image_count", "train_count", "val_count"])
    return dataset


# -- the probe world ---------------------------------------------------------------------------------


def probe_world_params(
    *, name: str = "probe-world", n_images: int | None = None, seed: int | None = None, size: int | None = None
) -> dict[str, Any]:
    return PROBE_WORLD_PARAMS.validate({"name": name, "n_images": n_images, "seed": seed, "size": size})


def probe_world_run_start(*, created_by=None, inline: bool = False, **params: Any) -> Run:
    run, _ = run_start(kind=PROBE_WORLD.name, params=probe_world_params(**params), created_by=created_by, inline=inline)
    return run


def probe_world_generate(*, out_dir: Path, n_images: int, seed: int, size: int, progress=None) -> dict[str, Any]:
    """Generate the probe world into ``out_dir`` (which must not exist or be empty)."""
    from analysis.engine.probe_world import generate_probe_world

    summary = generate_probe_world(out_dir, n_images=n_images, seed=seed, size=size, progress=progress)
    return {
        "out_dir": summary.out_dir,
        "n_images": summary.n_images,
        "n_train": summary.n_train,
        "n_val": summary.n_val,
        "seg_size": summary.seg_size,
        "class_counts": summary.class_counts,
        "generation_seconds": round(summary.seconds, 2),
    }


def probe_world_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    params = probe_world_params(**run.params)
    _check_new_name(params["name"])
    out_dir = datasets_dir() / f"{params['name']}-{params_hash(params)[:10]}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a previous attempt that died half-way
    progress.phase(f"Generating {params['n_images']} images", total=params["n_images"])
    summary = probe_world_generate(
        out_dir=out_dir, n_images=params["n_images"], seed=params["seed"], size=params["size"], progress=progress
    )
    dataset = probe_world_register(root=out_dir, params=params, run=run, progress=progress)
    return {"dataset": dataset.name, "images": dataset.image_count, **summary}


def probe_world_register(
    *, root: Path, params: dict[str, Any], run: Run | None = None, progress: RunProgress | None = None
) -> Dataset:
    """Register a probe world generated into ``root`` with ``params`` (:func:`probe_world_params`) under
    ``params["name"]``. The files are only read: tests register one generated world in many databases."""
    return dataset_register(
        name=params["name"],
        kind=DatasetKind.PROBE_WORLD,
        root=root,
        description="Generated probe world: object-centred images with pixel masks for "
        "objects, parts, materials and colours.",
        params=params,
        run=run,
        progress=progress,
    )


PROBE_WORLD = register_job_kind(
    JobKind(
        name="probe_world",
        label="Generate the probe world",
        queue=GPU_QUEUE,
        execute=probe_world_run_execute,
        params=PROBE_WORLD_PARAMS,
        exporter=None,  # the dataset it registers is a Broden directory on the server
        soft_time_limit=3600,
        time_limit=3700,
        description="Generates a dataset with pixel truth in the Broden format and registers it.",
    )
)


# -- imports -----------------------------------------------------------------------------------------


def broden_import_run_start(*, path: str, name: str, created_by=None, inline: bool = False) -> Run:
    source = Path(path).expanduser().resolve()
    if not source.is_dir():
        raise RunInputError(f"{source} is not a directory")
    run, _ = run_start(
        kind=BRODEN_IMPORT.name, params={"path": str(source), "name": name}, created_by=created_by, inline=inline
    )
    return run


def broden_import_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    source = Path(run.params["path"])
    if not source.is_dir():
        raise RunInputError(f"{source} is not a directory")
    dataset = dataset_register(
        name=run.params["name"],
        kind=DatasetKind.BRODEN,
        root=source,
        source_dir=str(source),
        run=run,
        progress=progress,
        description=f"Imported from {source}",
    )
    return {"dataset": dataset.name, "images": dataset.image_count, "concepts": dataset.concepts.count()}


BRODEN_IMPORT = register_job_kind(
    JobKind(
        name="import_broden",
        label="Import a Broden dataset",
        queue=DEFAULT_QUEUE,
        execute=broden_import_run_execute,
        params=BRODEN_IMPORT_PARAMS,
        exporter=None,  # the dataset is the directory it was imported from
        soft_time_limit=6 * 3600,
        time_limit=6 * 3600 + 120,
        api_startable=False,  # reads a server path
        description="Validates a Broden-format directory and registers its images and concepts.",
    )
)


def pascal_part_import_run_start(
    *, path: str, name: str, images: str | None = None, created_by=None, inline: bool = False
) -> Run:
    source = Path(path).expanduser().resolve()
    if not source.is_dir():
        raise RunInputError(f"{source} is not a directory")
    params = {"path": str(source), "name": name, "images": str(Path(images).expanduser().resolve()) if images else ""}
    run, _ = run_start(kind=PASCAL_PART_IMPORT.name, params=params, created_by=created_by, inline=inline)
    return run


def pascal_part_directories(source: Path, images: str) -> tuple[Path, Path, Path | None]:
    """(annotations, images, split lists) of a PASCAL-Part + VOC folder; clear errors when missing."""
    annotations = source / "Annotations_Part" if (source / "Annotations_Part").is_dir() else source
    image_dir = (
        Path(images)
        if images
        else next(
            (candidate for candidate in (source / "JPEGImages", source.parent / "JPEGImages") if candidate.is_dir()),
            None,
        )
    )
    if image_dir is None or not image_dir.is_dir():
        raise RunInputError(f"No JPEGImages folder next to {annotations}; give the VOC images with --images DIR.")
    split_dir = next(
        (
            candidate
            for candidate in (source / "ImageSets" / "Main", image_dir.parent / "ImageSets" / "Main")
            if candidate.is_dir()
        ),
        None,
    )
    return annotations, image_dir, split_dir


def pascal_part_import_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    from analysis.engine.pascal_convert import convert_pascal_part
    from analysis.engine.pascal_part import PascalPartFormatError

    params = run.params
    _check_new_name(params["name"])
    annotations, image_dir, split_dir = pascal_part_directories(Path(params["path"]), params.get("images", ""))
    out_dir = datasets_dir() / f"{params['name']}-{params_hash(params)[:10]}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    progress.phase("Converting PASCAL-Part annotations", total=len(list(annotations.glob("*.mat"))))
    try:
        summary = convert_pascal_part(annotations, image_dir, out_dir, split_dir=split_dir, progress=progress)
    except PascalPartFormatError as error:
        raise RunInputError(str(error)) from None
    try:
        dataset = dataset_register(
            name=params["name"],
            kind=DatasetKind.PASCAL_PART,
            root=out_dir,
            source_dir=str(annotations),
            run=run,
            progress=progress,
            description=f"PASCAL-Part from {annotations}",
            params=params,
        )
    except BaseException:  # whatever stops the registration (even a time limit): no half-converted copy stays
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return {
        "dataset": dataset.name,
        "images": summary.images,
        "objects": summary.objects,
        "parts": summary.parts,
        "object_classes": len(summary.object_labels),
        "part_names": len(summary.part_labels),
    }


PASCAL_PART_IMPORT = register_job_kind(
    JobKind(
        name="import_pascal_part",
        label="Import PASCAL-Part",
        queue=DEFAULT_QUEUE,
        execute=pascal_part_import_run_execute,
        params=PASCAL_PART_IMPORT_PARAMS,
        exporter=None,  # the converted dataset is a Broden directory on the server
        soft_time_limit=6 * 3600,
        time_limit=6 * 3600 + 120,
        api_startable=False,  # reads server paths
        description="Converts PASCAL-Part annotations to the Broden format and registers them.",
    )
)
