"""Activation extraction (a Run): one streamed pass over a dataset gathers, per layer, the top images per
unit (overall and per object class, with peaks), the exact per-unit top quantile and per-image scores,
and caches the maps as float16 memory maps reused by every later run with the same inputs.

Shards (``shards=K``): the images are cut into K ranges on batch boundaries, each an ``extract_shard`` run that
any GPU worker may take (:func:`~.runs.run_shards`, as the dissection's shards). A shard writes its range's maps and
its statistics under ``extractions/<run>/shards/<k>/`` and publishes them; the parent then folds the statistics in
image order (every accumulator merges exactly) and copies the maps into the one cache every later run reads, so
K shards leave bit for bit what one pass leaves. A shard that fails or whose worker dies fails the run, naming it;
nothing is published under the cache's key until the merge is whole.

Our choice: the canonical activations are the float16-rounded maps. Statistics are computed from the
rounded values, so the cache, the statistics and ``export_run``'s float32 maps agree exactly, and a
run that reuses the cache reproduces a fresh run bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from analysis import params as p
from analysis import storage
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import (
    Concept,
    Dataset,
    ExemplarKind,
    ExemplarSet,
    Layer,
    LayerExtraction,
    Network,
    Run,
    UnitActivationSummary,
)
from analysis.storage import artifact_store, local_path, publish
from unitscope.spreadsheets import csv_writer

from .exports import write_run_json
from .networks import network_check_weights, network_spec
from .runs import (
    MAX_SHARDS,
    RunInputError,
    RunProgress,
    refuse_failed_shards,
    run_layers,
    run_network_and_dataset,
    run_shards,
    run_start,
    shard_param_fields,
    shard_range_rules,
)

EXTRACTION_PARAMS = p.ParamSchema(
    {
        "network": p.name(),
        "dataset": p.name(),
        "layers": p.Param(str, min_items=1, many=True, help="layers to extract, in any order"),
        "quantile": p.fraction(0.995, help="per-unit threshold level T_k (ND'18: 0.995, the top 0.005)"),
        "k_overall": p.integers(1, 100, 15, help="top images per unit"),
        "k_per_class": p.integers(1, 100, 10, help="top images per unit and object class"),
        "batch_size": p.integers(1, 4096, 64),
        "decile_seed": p.seed(),
        "shards": p.integers(
            1,
            MAX_SHARDS,
            1,
            help="split the forward pass into this many image ranges (on batch boundaries), each its own task for "
            "any GPU worker; merged bit for bit",
        ),
    }
)
EXTRACTION_DEFAULTS = EXTRACTION_PARAMS.defaults
DECILE_BINS = 10
EXPORT_CHUNK_IMAGES = 256


def extraction_params(*, network: str, dataset: str, layers: list[str], **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of an ``extract`` run (defaults filled in)."""
    return EXTRACTION_PARAMS.validate({"network": network, "dataset": dataset, "layers": layers, **overrides})


def extraction_run_start(
    *, network: str, dataset: str, layers: list[str], created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    run, _ = run_start(
        kind=EXTRACTION.name,
        params=extraction_params(network=network, dataset=dataset, layers=layers, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


def activation_cache_key(network: Network, dataset: Dataset, layer: Layer) -> str:
    """Everything that determines a layer's maps on a dataset: weights (the state-dict hash, checked against the
    loaded model by :func:`~.networks.network_check_weights` before any cache is used), builder, dataset, layer,
    preprocessing."""
    key = {
        "weights": network.weights_sha256,
        "arch": network.arch,
        "source": network.source,
        "kwargs": network.callable_kwargs,
        "dataset": dataset.root_dir,
        "images": dataset.image_count,
        "layer": layer.name,
        "input": [network.input_height, network.input_width],
        "mean": network.mean,
        "std": network.std,
        "resize": "bilinear-antialias",
        "dtype": "float16",
    }
    if network.channel_order != "RGB":  # keys of RGB networks stay as they were
        key["channel_order"] = network.channel_order
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def publish_cache(directory: Path) -> None:
    """Upload a finished activation cache to the artifact store: the maps first, ``meta.json`` (which marks a cache
    complete, :func:`_complete_cache`) last."""
    from analysis.storage import publish

    publish(directory / "maps.f16")
    publish(directory / "meta.json")


def activation_cache_dir(cache_key: str) -> Path:
    return settings.UNITSCOPE_DATA_DIR / "activations" / cache_key


def open_activation_cache(extraction: LayerExtraction) -> np.memmap:
    """The float16 maps ``[images, units, h, w]`` of an extraction, read-only (fetched from the artifact store into
    this machine's data dir when missing)."""
    from analysis.storage import fetch

    directory = fetch(extraction.cache_path)
    meta = json.loads((directory / "meta.json").read_text())
    return np.memmap(directory / "maps.f16", dtype=np.float16, mode="r", shape=tuple(meta["shape"]))


def _complete_cache(cache_key: str) -> np.memmap | None:
    """The finished cache of ``cache_key``, here or in the artifact store (its ``meta.json`` is published last)."""
    from analysis.storage import artifact_store

    directory = activation_cache_dir(cache_key)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        store = artifact_store()
        if not store.remote or not store.exists(store.key(meta_path)):
            return None
        directory = store.fetch(store.key(directory))
    meta = json.loads(meta_path.read_text())
    return np.memmap(directory / "maps.f16", dtype=np.float16, mode="r", shape=tuple(meta["shape"]))


def image_class_ids(dataset: Dataset) -> tuple[list[str], np.ndarray | None]:
    """Sorted object-class names and each image's class id (-1 for none); (``[]``, None) without classes."""
    if not dataset.has_image_classes:
        return [], None
    rows = list(dataset.images.order_by("index").values_list("object_class__name", flat=True))
    names = sorted({name for name in rows if name})
    index = {name: position for position, name in enumerate(names)}
    return names, np.array([index.get(name, -1) if name else -1 for name in rows], dtype=np.int64)


def dataset_image_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    input_size: tuple[int, int],
    load_images: bool = True,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[Any, Any]]:
    """``(uint8 images [B, 3, H, W] resized to input_size, image indices [B])`` in index order, streamed; images
    ``[start, stop)`` only when given (each row one indexed lookup, :meth:`BrodenReader.row`)."""
    import torch
    import torch.nn.functional as F

    from analysis.engine.broden import BrodenReader

    reader = BrodenReader(dataset.root)
    pending: list[np.ndarray] = []
    indices: list[int] = []

    def flush():
        index_tensor = torch.tensor(indices, dtype=torch.int64)
        if not load_images:
            return torch.empty((len(indices), 0), dtype=torch.uint8), index_tensor
        if all(image.shape[:2] == input_size for image in pending):
            batch = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).contiguous()
        else:  # resize each image to the network's input (bilinear with antialiasing)
            batch = torch.stack(
                [
                    F.interpolate(
                        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                        size=input_size,
                        mode="bilinear",
                        align_corners=False,
                        antialias=True,
                    )[0]
                    .round()
                    .clamp(0, 255)
                    .byte()
                    for image in pending
                ]
            )
        return batch, index_tensor

    if start == 0 and stop is None:
        positioned_rows: Iterator[tuple[int, Any]] = enumerate(reader.rows())
    else:
        indexed = reader.indexed_rows
        positioned_rows = (
            (position, indexed[position]) for position in range(start, len(indexed) if stop is None else stop)
        )
    for position, row in positioned_rows:
        if load_images:
            pending.append(reader.load_image(row))
        indices.append(position)
        if len(indices) == batch_size:
            yield flush()
            pending, indices = [], []
    if indices:
        yield flush()


def extraction_shard_bounds(n_images: int, batch_size: int, shards: int) -> list[int]:
    """The image ranges of ``shards`` shards, on batch boundaries (:func:`analysis.engine.extraction.
    batch_aligned_bounds`), so the shards' maps equal one pass's bit for bit; refused, naming the limit, when there
    are fewer batches than shards."""
    from analysis.engine.extraction import batch_aligned_bounds

    try:
        return batch_aligned_bounds(n_images, batch_size, shards)
    except ValueError:
        batches = -(-n_images // batch_size)
        raise RunInputError(
            f"{shards} shards for {batches} batch{'es' if batches != 1 else ''} of {batch_size} images: use at most "
            f"{batches} shards, or a smaller batch size.",
            field="shards",
        ) from None


def _complete_caches_or_none(network: Network, dataset: Dataset, layers: dict[str, Layer], names: list[str]):
    return {name: _complete_cache(activation_cache_key(network, dataset, layers[name])) for name in names}


def _extract_range(
    *,
    params: dict[str, Any],
    network: Network,
    dataset: Dataset,
    layers: dict[str, Layer],
    targets: dict[str, np.memmap],
    start: int,
    stop: int,
    device: str,
    progress: RunProgress,
) -> dict[str, Any]:
    """One streamed pass over images ``[start, stop)``: ``{layer: LayerStatistics}`` of every layer of the run.
    The layers of ``targets`` go through the network and their float16 maps are written there (row 0 = image
    ``start``); the others are read back from their complete caches (no forward pass for them)."""
    import torch

    from analysis.engine.extraction import extract_statistics
    from analysis.engine.networks import NetworkError, capture_forward, load_network, normalize_images

    layer_order = params["layers"]
    to_compute = [name for name in layer_order if name in targets]
    cached = _complete_caches_or_none(network, dataset, layers, [name for name in layer_order if name not in targets])
    missing = [name for name, cache in cached.items() if cache is None]
    if missing:
        raise RunInputError(f"The activation cache of {', '.join(missing)} is gone (deleted while this run waited).")
    class_names, class_ids = image_class_ids(dataset)
    dev = torch.device(device)
    model = None
    if to_compute:
        try:
            model = load_network(network_spec(network), device=dev)
        except NetworkError as error:
            raise RunInputError(str(error)) from None
        # The caches are keyed on the registered state-dict hash: a model that loads other weights now must
        # not write maps under it. (Reusing complete caches needs no model, so the registered hash stands.)
        network_check_weights(network, model)
    class_tensor = torch.from_numpy(class_ids) if class_ids is not None else None
    current: dict[str, Any] = {}

    def batches():
        for images, indices in dataset_image_batches(
            dataset,
            batch_size=params["batch_size"],
            input_size=(network.input_height, network.input_width),
            load_images=bool(to_compute),
            start=start,
            stop=stop,
        ):
            current["indices"] = indices
            yield images, indices, (class_tensor[indices] if class_tensor is not None else None)

    @torch.no_grad()
    def forward(images):
        outputs = {}
        if to_compute:
            computed = capture_forward(
                model, normalize_images(images, network.mean, network.std, network.channel_order), to_compute
            )
            for name, value in computed.items():
                refuse_float16_overflow(name, value, current["indices"])
            outputs.update({name: value.to(torch.float16).to(torch.float32) for name, value in computed.items()})
        rows = current["indices"].numpy()
        for name, cache in cached.items():  # read back from the cache: no forward pass for this layer
            outputs[name] = torch.from_numpy(np.asarray(cache[rows], dtype=np.float32)).to(dev)
        return outputs

    return extract_statistics(
        forward,
        batches(),
        layer_order,
        total_images=dataset.image_count,  # the whole dataset's: shard states merge exactly
        num_classes=len(class_names) or None,
        device=dev,
        k_overall=params["k_overall"],
        k_per_class=params["k_per_class"],
        quantile=params["quantile"],
        cache=targets,
        cache_row_offset=start,
        progress=progress,
    )


def _layer_map_shape(layer: Layer) -> tuple[int, int, int]:
    return (layer.units, layer.out_height, layer.out_width)


def _shards_key(run_id: int) -> str:
    return f"extractions/{run_id}/shards"


def extraction_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.extraction import decile_exemplars

    params = extraction_params(**run.params)
    network, dataset = run_network_and_dataset(params)
    layers = run_layers(network, params["layers"])
    layer_order = params["layers"]
    class_names, _ = image_class_ids(dataset)
    n_images = dataset.image_count
    existing = _complete_caches_or_none(network, dataset, layers, layer_order)
    to_compute = [name for name in layer_order if existing[name] is None]
    # Shards split the forward pass; a run whose every layer is cached reads the caches in one pass.
    bounds = extraction_shard_bounds(n_images, params["batch_size"], params["shards"] if to_compute else 1)
    partials: dict[str, Path] = {}
    targets: dict[str, np.memmap] = {}
    for name in to_compute:
        partial = activation_cache_dir(activation_cache_key(network, dataset, layers[name]))
        partial = partial.with_name(partial.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        partials[name] = partial
        shape = (n_images, *_layer_map_shape(layers[name]))
        targets[name] = np.memmap(partial / "maps.f16", dtype=np.float16, mode="w+", shape=shape)

    verb = "Extracting" if to_compute else "Reading cached activations of"
    shards = len(bounds) - 1
    progress.phase(
        f"{verb} {', '.join(layer_order)} on {n_images} images" + (f" in {shards} shards" if shards > 1 else ""),
        total=n_images,
    )
    try:
        if shards == 1:
            statistics = _extract_range(
                params=params,
                network=network,
                dataset=dataset,
                layers=layers,
                targets=targets,
                start=0,
                stop=n_images,
                device=device,
                progress=progress,
            )
        else:
            try:
                statistics = _extraction_shards_run_and_merge(
                    run=run, params=params, bounds=bounds, targets=targets, device=device, progress=progress
                )
            finally:
                artifact_store().remove(_shards_key(run.pk))
    except BaseException:  # failed, cancelled, out of time: the unfinished caches go (they can be large)
        targets.clear()
        for partial in partials.values():
            shutil.rmtree(partial, ignore_errors=True)
        raise

    for name, partial in partials.items():  # publish the finished caches
        targets[name].flush()
        (partial / "meta.json").write_text(
            json.dumps(
                {
                    "shape": list(targets[name].shape),
                    "dtype": "float16",
                    "layer": name,
                    "network": network.name,
                    "dataset": dataset.name,
                }
            )
        )
        final = partial.with_name(partial.name.removesuffix(".partial"))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        publish_cache(final)

    progress.phase("Saving exemplars and statistics", total=len(layer_order))
    stats_dir = settings.UNITSCOPE_DATA_DIR / "extractions" / str(run.pk)
    stats_dir.mkdir(parents=True, exist_ok=True)
    class_concepts = {
        concept.name: concept
        for concept in Concept.objects.filter(dataset=dataset, category="object", name__in=class_names)
    }
    summary = {}
    with transaction.atomic():
        for done, name in enumerate(layer_order, start=1):
            stats = statistics[name]
            stats_path = stats_dir / f"{name}.pt"
            torch.save(stats.to_state(), stats_path)
            storage.publish(stats_path)
            extraction = LayerExtraction.objects.create(
                run=run,
                layer=layers[name],
                dataset=dataset,
                cache_key=activation_cache_key(network, dataset, layers[name]),
                cache_path=storage.stored_path(
                    activation_cache_dir(activation_cache_key(network, dataset, layers[name]))
                ),
                stats_path=storage.stored_path(stats_path),
                n_images=n_images,
                map_height=stats.shape[1],
                map_width=stats.shape[2],
                quantile=params["quantile"],
                k_overall=params["k_overall"],
                k_per_class=params["k_per_class"],
                class_names=class_names,
            )
            _save_layer_exemplars(extraction, stats, class_concepts, decile_exemplars, params["decile_seed"])
            thresholds = stats.quantile.result()
            summary[name] = {
                "units": stats.shape[0],
                "map": list(stats.shape[1:]),
                "median_threshold": float(thresholds.median()),
            }
            progress(done, len(layer_order))
    return {
        "layers": summary,
        "images": n_images,
        "forward_pass": bool(to_compute),
        "computed_layers": to_compute,
        "reused_layers": [name for name in layer_order if name not in targets],
        "shards": shards,
    }


def _extraction_shards_run_and_merge(
    *,
    run: Run,
    params: dict[str, Any],
    bounds: list[int],
    targets: dict[str, np.memmap],
    device: str,
    progress: RunProgress,
) -> dict[str, Any]:
    """Run the shards of an extraction (:func:`~.runs.run_shards`), then merge: each shard's statistics fold in
    (exact, :meth:`LayerStatistics.merge`) and its maps are copied into ``targets`` at its rows, shard by shard in
    image order; each shard's files leave the scratch and the store once copied."""
    import torch

    from analysis.engine.extraction import copy_cache_rows, fold_statistics

    shard_runs = run_shards(
        run=run,
        kind=EXTRACTION_SHARD.name,
        shard_params=[
            {
                "extraction_run": run.pk,
                "shard": index,
                "start": bounds[index],
                "stop": bounds[index + 1],
                "compute": sorted(targets),
            }
            for index in range(len(bounds) - 1)
        ],
        progress=progress,
    )
    refuse_failed_shards(shard_runs)
    progress.phase(f"Merging the maps and statistics of {len(shard_runs)} shards", total=len(shard_runs))
    store = artifact_store()
    statistics: dict[str, Any] = {}
    for index in range(len(shard_runs)):
        start, stop = bounds[index], bounds[index + 1]
        key = f"{_shards_key(run.pk)}/{index:04d}"
        states = torch.load(store.fetch(f"{key}/{SHARD_STATISTICS_FILE}"), map_location=device, weights_only=True)
        fold_statistics(statistics, states, device=device)
        for name, target in targets.items():
            maps = np.memmap(
                store.fetch(f"{key}/{name}.f16"), dtype=np.float16, mode="r", shape=(stop - start, *target.shape[1:])
            )
            copy_cache_rows(maps, target, row_offset=start, chunk_rows=EXPORT_CHUNK_IMAGES)
            del maps
        store.remove(key)
        progress(index + 1, len(shard_runs))
    return statistics


# -- extract_shard ------------------------------------------------------------------------------------

SHARD_STATISTICS_FILE = "statistics.pt"


def extraction_shard_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    """One image range of a sharded extraction: the layers named in ``compute`` go through the network (maps
    written to ``extractions/<parent>/shards/<k>/<layer>.f16``, this range's rows only), the others are read
    from their caches; every layer's statistics of the range go to ``statistics.pt``. Published maps first,
    statistics last, before the run counts as done: the parent may merge on another machine."""
    import torch

    parent = Run.objects.filter(pk=run.params["extraction_run"]).first()
    if parent is None:
        raise RunInputError(f"The extraction run {run.params['extraction_run']} no longer exists.")
    params = extraction_params(**parent.params)
    network, dataset = run_network_and_dataset(params)
    layers = run_layers(network, params["layers"])
    index, start, stop = int(run.params["shard"]), int(run.params["start"]), int(run.params["stop"])
    if stop > dataset.image_count:
        raise RunInputError(f"Shard {index} reaches image {stop - 1}, but {dataset.name} has {dataset.image_count}.")
    directory = local_path(f"{_shards_key(parent.pk)}/{index:04d}")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    targets = {
        name: np.memmap(
            directory / f"{name}.f16",
            dtype=np.float16,
            mode="w+",
            shape=(stop - start, *_layer_map_shape(layers[name])),
        )
        for name in run.params["compute"]
    }
    progress.phase(f"Extracting images {start}–{stop - 1} of {', '.join(params['layers'])}", total=stop - start)
    try:
        statistics = _extract_range(
            params=params,
            network=network,
            dataset=dataset,
            layers=layers,
            targets=targets,
            start=start,
            stop=stop,
            device=device,
            progress=progress,
        )
        for name, target in targets.items():
            target.flush()
            publish(directory / f"{name}.f16")
        torch.save({name: stats.to_state() for name, stats in statistics.items()}, directory / SHARD_STATISTICS_FILE)
        publish(directory / SHARD_STATISTICS_FILE)
    except BaseException:  # failed or cancelled (its extraction was): nothing of it stays in this scratch
        targets.clear()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return {"extraction_run": parent.pk, "shard": index, "images": stop - start}


def _save_layer_exemplars(extraction: LayerExtraction, stats, class_concepts, decile_exemplars, seed: int) -> None:
    units = {unit.index: unit for unit in extraction.layer.unit_set.all()}
    top = stats.topk.result()
    thresholds = stats.quantile.result().cpu()
    ties = top.ceiling_ties().cpu()
    image_ids, image_scores = stats.image_scores.result()
    deciles = decile_exemplars(image_scores, image_ids, num_bins=DECILE_BINS, seed=seed)

    def clean(images, scores, peaks):
        keep = images >= 0
        return (images[keep].tolist(), [round(float(value), 6) for value in scores[keep]], peaks[keep].tolist())

    summaries, sets = [], []
    for index, unit in units.items():
        maximum = float(top.scores[index, 0].nan_to_num(0))
        summaries.append(
            UnitActivationSummary(
                extraction=extraction,
                unit=unit,
                threshold=float(thresholds[index]),
                max_activation=maximum,
                active_images=int((image_scores[:, index] > 0).sum()),
                ceiling_ties=int(ties[index]),
                # stuck at a ceiling (the mirror of a unit stuck at zero): T_k is the maximum and images tie there
                saturated_at_ceiling=bool(maximum > 0 and float(thresholds[index]) >= maximum and int(ties[index]) > 1),
            )
        )
        images, scores, peaks = clean(top.images[index].cpu(), top.scores[index].cpu(), top.peaks[index].cpu())
        sets.append(
            ExemplarSet(
                extraction=extraction,
                unit=unit,
                kind=ExemplarKind.TOP_OVERALL,
                image_indices=images,
                scores=scores,
                peaks=peaks,
            )
        )
        if top.class_images is not None:
            for class_id, class_name in enumerate(extraction.class_names):
                images, scores, peaks = clean(
                    top.class_images[index, class_id].cpu(),
                    top.class_scores[index, class_id].cpu(),
                    top.class_peaks[index, class_id].cpu(),
                )
                if images:
                    sets.append(
                        ExemplarSet(
                            extraction=extraction,
                            unit=unit,
                            kind=ExemplarKind.TOP_CLASS,
                            object_class=class_concepts.get(class_name),
                            image_indices=images,
                            scores=scores,
                            peaks=peaks,
                        )
                    )
        decile_images = deciles.images[index, :, 0].cpu()
        decile_scores = deciles.scores[index, :, 0].cpu()
        keep = decile_images >= 0
        if keep.any():
            chosen = decile_images[keep]
            # The peak of each decile image: recomputed from the cache when rendering (argmax of its map).
            sets.append(
                ExemplarSet(
                    extraction=extraction,
                    unit=unit,
                    kind=ExemplarKind.DECILE,
                    image_indices=chosen.tolist(),
                    scores=[round(float(value), 6) for value in decile_scores[keep]],
                    peaks=[],
                )
            )
    UnitActivationSummary.objects.bulk_create(summaries, batch_size=2000)
    ExemplarSet.objects.bulk_create(sets, batch_size=2000)


def refuse_float16_overflow(layer: str, acts, image_indices) -> None:
    """Stop the run, naming the units, when a layer's activations leave float16's range: the cache stores maps as
    float16 and every statistic is computed from the cached values (DESIGN §5), so a value beyond ±65504 would
    silently become ±inf (and its unit's threshold undefined). Our choice over keeping such units in float32: one
    cache format for every reader; the message says how to get a layer in range."""
    from analysis.engine.extraction import FLOAT16_MAX, units_beyond_float16

    units, peaks = units_beyond_float16(acts)
    if not len(units):
        return
    shown = ", ".join(f"{int(unit)} ({float(peak):.3g})" for unit, peak in zip(units[:10], peaks[:10]))
    more = f" and {len(units) - 10} more" if len(units) > 10 else ""
    first = int(image_indices.min()) if len(image_indices) else 0
    raise RunInputError(
        f"{layer}: {len(units)} unit{'s' if len(units) != 1 else ''} reach values the float16 activation cache "
        f"cannot hold (beyond ±{FLOAT16_MAX:g}, or not finite) on images from #{first}: unit (largest |value|) "
        f"{shown}{more}. Nothing was saved. Study a layer after a normalisation, or register the network with "
        "inputs scaled so that its activations stay in range."
    )


def extraction_export(run: Run, out_dir: Path) -> list[Path]:
    """``<layer>.npy`` (float32, images × units × h × w: exactly the maps the statistics were computed from),
    ``<layer>_units.csv`` (``unit,max_activation,threshold,active_images,status``, status ``live``, ``dead`` or
    ``saturated`` as :class:`analysis.models.UnitStatus` defines them), ``images.csv`` (``index,image`` as in the
    dataset's index.csv) and ``run.json``."""
    from analysis import storage

    extractions = list(
        LayerExtraction.objects.filter(run=run).select_related("layer__network", "dataset").order_by("layer__order")
    )
    if not extractions:
        raise RunInputError(f"Run {run.pk} holds no extracted layer.")
    written = []
    for extraction in extractions:
        maps = open_activation_cache(extraction)
        path = out_dir / f"{extraction.layer.name}.npy"
        target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=maps.shape)
        for start in range(0, maps.shape[0], EXPORT_CHUNK_IMAGES):  # bounded memory
            target[start : start + EXPORT_CHUNK_IMAGES] = maps[start : start + EXPORT_CHUNK_IMAGES]
        target.flush()
        del target
        written.append(path)
        written.append(_write_unit_summaries(out_dir / f"{extraction.layer.name}_units.csv", extraction))
    dataset, network = extractions[0].dataset, extractions[0].layer.network
    images_path = out_dir / "images.csv"
    with open(images_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["index", "image"])
        writer.writerows(dataset.images.order_by("index").values_list("index", "path"))
    written.append(images_path)
    written.append(
        write_run_json(
            out_dir,
            run,
            {
                "network": network.name,
                "weights_sha256": network.weights_sha256,
                "dataset": dataset.name,
                "dataset_dir": str(storage.local_path(dataset.root_dir)),
                "layers": [extraction.layer.name for extraction in extractions],
                "shapes": {
                    extraction.layer.name: [
                        extraction.n_images,
                        extraction.layer.units,
                        extraction.map_height,
                        extraction.map_width,
                    ]
                    for extraction in extractions
                },
                "preprocessing": {
                    "input_size": [network.input_height, network.input_width],
                    "mean": network.mean,
                    "std": network.std,
                    "channel_order": network.channel_order,
                    "resize": "whole image, bilinear with antialiasing when sizes differ, no crop",
                    "activations": "post-layer outputs rounded to float16, exported as float32",
                },
                "quantile": extractions[0].quantile,
                "k_overall": extractions[0].k_overall,
                "k_per_class": extractions[0].k_per_class,
            },
        )
    )
    return written


def _write_unit_summaries(path: Path, extraction: LayerExtraction) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["unit", "max_activation", "threshold", "active_images", "status"])
        writer.writerows(
            (
                summary.unit.index,
                repr(summary.max_activation),
                repr(summary.threshold),
                summary.active_images,
                summary.status,
            )
            for summary in extraction.unit_summaries.with_status().select_related("unit")
        )
    return path


EXTRACTION = register_job_kind(
    JobKind(
        name="extract",
        label="Extract activations",
        queue=GPU_QUEUE,
        execute=extraction_run_execute,
        params=EXTRACTION_PARAMS,
        exporter=extraction_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Streams a dataset through a network: top images per unit (overall and per class), exact "
        "top quantiles, decile samples; caches the maps.",
    )
)


EXTRACTION_SHARD = register_job_kind(
    JobKind(
        name="extract_shard",
        label="Extraction shard",
        queue=GPU_QUEUE,
        execute=extraction_shard_run_execute,
        params=p.ParamSchema(
            {
                **shard_param_fields("extraction_run"),
                "compute": p.Param(str, min_items=1, many=True, help="layers that go through the network"),
            },
            rules=shard_range_rules,
        ),
        exporter=None,  # its maps and statistics are merged into the extraction, which exports them
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        reuse_finished=False,
        api_startable=False,
        description="Runs one image range of an extraction through the network; the extraction merges.",
    )
)
