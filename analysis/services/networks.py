"""Networks: register a model (torchvision arch + weights, TorchScript, module:callable) with its layers,
units and receptive-field geometry; train the demo network on the probe world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import Dataset, Layer, Network, NetworkSource, Run, Unit
from analysis.storage import artifact_store, fetch_if_stored, publish_as

from .runs import RunInputError, RunProgress, run_start

DEMO_TRAINING_PARAMS = p.ParamSchema(
    {
        "dataset": p.name("probe-world", help="a dataset with one object class per image, such as the probe world"),
        "name": p.name("demo-net", slug=True, help="network name to register"),
        "epochs": p.integers(1, 500, 8),
        "seed": p.seed(),
        "lr": p.Param(float, 1e-3, low=0, low_open=True),
        "batch_size": p.integers(1, 4096, 64),
    }
)
DEMO_TRAINING_DEFAULTS = DEMO_TRAINING_PARAMS.defaults


def network_spec(network: Network):
    """The engine's description of a registered network."""
    from analysis.engine.networks import NetworkKind, NetworkSpec

    kind = {
        NetworkSource.TORCHVISION: NetworkKind.TORCHVISION,
        NetworkSource.TORCHSCRIPT: NetworkKind.TORCHSCRIPT,
        NetworkSource.MODULE: NetworkKind.MODULE,
    }[NetworkSource(network.source)]
    return NetworkSpec(
        kind=kind,
        target=network.arch,
        weights=fetch_if_stored(network.weights_path) or None,
        kwargs=network.callable_kwargs,
        input_size=(network.input_height, network.input_width),
        mean=tuple(network.mean),
        std=tuple(network.std),
        class_names=tuple(network.class_names) or None,
        channel_order=network.channel_order,
    )


class _NoProgress:
    def __call__(self, done: int, total: int | None = None) -> None:
        pass

    def phase(self, name: str, total: int = 0) -> None:
        pass


def network_register(
    *,
    name: str,
    spec,
    description: str = "",
    trained_on: Dataset | None = None,
    training_run: Run | None = None,
    training_report: dict | None = None,
    progress=None,
) -> Network:
    """Register ``spec`` under ``name``: load it on the CPU, list its layers by graph node (every call site of
    a shared module is its own layer), compute each layer's receptive field analytically, check it numerically
    on a few units at the network's input size (bounded memory, seconds), hash its weights, and save it all.

    The name is claimed first by inserting the network row (``name`` is unique), so a second registration under
    the same name fails at once with a clear message instead of computing for nothing; if registration fails
    afterwards, the row is removed again. ``progress`` (``progress(done, total)`` and ``progress.phase(name,
    total)``, e.g. a :class:`RunProgress`) reports the phases. ``weights_sha256`` is the hash of the loaded
    state dict (:func:`~analysis.engine.networks.state_dict_sha256`), whatever loaded the weights: activation
    caches are keyed on it.

    Raises :class:`RunInputError` with a readable message for anything the user can fix.
    """
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_slug
    from django.db import IntegrityError

    from analysis.engine.networks import TORCHSCRIPT_LIMIT, NetworkKind

    progress = progress or _NoProgress()
    try:
        validate_slug(name)
    except ValidationError:
        raise RunInputError(f"{name!r} is not a valid network name: use letters, digits, '-' and '_'.") from None
    if spec.kind is NetworkKind.TORCHSCRIPT:
        raise RunInputError(TORCHSCRIPT_LIMIT + ".")
    source = {
        NetworkKind.TORCHVISION: NetworkSource.TORCHVISION,
        NetworkKind.TORCHSCRIPT: NetworkSource.TORCHSCRIPT,
        NetworkKind.MODULE: NetworkSource.MODULE,
    }[spec.kind]
    try:
        with transaction.atomic():
            network = Network.objects.create(
                name=name,
                source=source,
                arch=spec.target,
                weights_path=spec.weights or "",
                input_height=spec.input_size[0],
                input_width=spec.input_size[1],
                mean=list(spec.mean),
                std=list(spec.std),
                channel_order=spec.channel_order,
                class_names=list(spec.class_names or []),
                callable_kwargs=dict(spec.kwargs),
                trained_on=trained_on,
                training_run=training_run,
                training_report=training_report or {},
                description=description or "(being registered)",
            )
    except IntegrityError:
        raise RunInputError(f"A network named {name!r} already exists (or is being registered).") from None
    if spec.weights and artifact_store().remote:  # the name is ours now: workers elsewhere fetch the weights
        stored = publish_as(spec.weights, f"networks/{name}/weights/{Path(spec.weights).name}")
        Network.objects.filter(pk=network.pk).update(weights_path=stored)
        network.weights_path = stored
    try:
        inspected = _inspect_network(spec, progress)
    except BaseException:
        Network.objects.filter(pk=network.pk).delete()
        raise
    layers, geometry, checks, weights_hash = inspected
    progress.phase("Saving layers and units", total=len(layers))
    try:
        with transaction.atomic():
            Network.objects.filter(pk=network.pk).update(weights_sha256=weights_hash, description=description)
            created = Layer.objects.bulk_create(
                [
                    Layer(
                        network=network,
                        name=layer.name,
                        order=order,
                        module_type=layer.module_type,
                        units=layer.channels,
                        out_height=layer.height,
                        out_width=layer.width,
                        **_geometry_fields(geometry.get(layer.name)),
                        rf_verified=bool(checks.get(layer.name) and checks[layer.name].verified),
                        rf_check=checks[layer.name].detail if layer.name in checks else "",
                    )
                    for order, layer in enumerate(layers)
                ]
            )
            Unit.objects.bulk_create(
                [Unit(layer=layer, index=index) for layer in created for index in range(layer.units)], batch_size=5000
            )
    except BaseException:
        Network.objects.filter(pk=network.pk).delete()
        raise
    progress(len(layers), len(layers))
    network.refresh_from_db()
    return network


def _inspect_network(spec, progress):
    """``(layers, geometry, checks, weights_sha256)`` of a spec (the engine work of registration)."""
    from analysis.engine.networks import NetworkError, discover_layers, load_network, state_dict_sha256
    from analysis.engine.receptive_field import ReceptiveFieldError, check_receptive_fields, receptive_fields

    progress.phase("Loading the network and hashing its weights")
    try:
        model = load_network(spec, device="cpu")
        weights_hash = state_dict_sha256(model)
        if spec.weights is None and state_dict_sha256(load_network(spec, device="cpu")) != weights_hash:
            # every later step rebuilds the network: its weights must come out the same each time
            raise RunInputError(
                f"{spec.target} makes new weights on every call (two builds gave different state dicts), so its "
                "units could not be studied reproducibly: save one build's state dict "
                "(torch.save(model.state_dict(), path)) and register it with that weights file."
            )
        progress.phase("Listing layers")
        layers = discover_layers(model, spec.input_size, "cpu")
    except NetworkError as error:
        raise RunInputError(str(error)) from None
    if not layers:
        raise RunInputError(
            "The network has no layer whose output is a feature map [B, C, H, W] at input size "
            f"{spec.input_size[0]}x{spec.input_size[1]}."
        )
    progress.phase("Computing receptive fields")
    try:
        # Every layer whose geometry is known; a layer the propagation cannot follow (adaptive pooling to
        # uneven bins, say) is registered without geometry rather than costing the others theirs.
        geometry = receptive_fields(model, spec.input_size, "cpu")
    except ReceptiveFieldError:
        geometry = {}  # untraceable model: layers are registered without geometry (said on its page)
    known = {layer.name: geometry[layer.name] for layer in layers if layer.name in geometry}
    progress.phase(f"Checking receptive fields on sampled units of {len(known)} layers", total=len(known))
    try:
        checks = check_receptive_fields(model, known, spec.input_size, "cpu", progress=progress) if known else {}
    except (ReceptiveFieldError, NetworkError):
        checks = {}
    return layers, geometry, checks, weights_hash


def network_check_weights(network: Network, model) -> str:
    """The state-dict hash of ``network``'s loaded ``model``; raises :class:`RunInputError` if its weights are not
    the ones registered (a weights file replaced, a builder that now loads other weights), so that no activation
    cache or result of the registered weights is ever reused for others.

    Rows registered before weights were identified by their state dict (``weights_sha256`` empty, or the sha256 of
    the weights file) are upgraded to the state-dict hash when the file still has those bytes.
    """
    import hashlib

    from analysis.engine.networks import state_dict_sha256

    actual = state_dict_sha256(model)
    if network.weights_sha256 == actual:
        return actual
    legacy = not network.weights_sha256
    if network.weights_path and not legacy:
        digest = hashlib.sha256()
        try:
            with open(fetch_if_stored(network.weights_path), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            legacy = digest.hexdigest() == network.weights_sha256
        except OSError:
            legacy = False
    if not legacy:
        raise RunInputError(
            f"The weights of network {network.name!r} are not the ones it was registered with (state-dict sha256 "
            f"{actual[:12]}… instead of {network.weights_sha256[:12]}…). Register the new weights under a new name."
        )
    Network.objects.filter(pk=network.pk).update(weights_sha256=actual)
    network.weights_sha256 = actual
    return actual


def _geometry_fields(geometry) -> dict[str, Any]:
    if geometry is None:
        return {}
    return {
        "rf_size_y": geometry.size[0],
        "rf_size_x": geometry.size[1],
        "rf_stride_y": geometry.stride[0],
        "rf_stride_x": geometry.stride[1],
        "rf_offset_y": geometry.offset[0],
        "rf_offset_x": geometry.offset[1],
    }


# -- the demo network ---------------------------------------------------------------------------------


def demo_training_params(**overrides: Any) -> dict[str, Any]:
    return DEMO_TRAINING_PARAMS.validate(overrides)


def demo_training_run_start(*, created_by=None, inline: bool = False, **params: Any) -> Run:
    run, _ = run_start(
        kind=DEMO_TRAINING.name, params=demo_training_params(**params), created_by=created_by, inline=inline
    )
    return run


def load_classification_tensors(dataset: Dataset, progress: RunProgress | None = None):
    """All images of a dataset with one object class per image, as ``uint8 [N, 3, H, W]`` tensors per
    split, with ``int64`` labels, and the class names (sorted). Images must share one size."""
    import numpy as np
    import torch

    from analysis.engine.broden import BrodenReader

    if not dataset.has_image_classes:
        raise RunInputError(f"Dataset {dataset.name!r} has no per-image object class (classes.csv).")
    rows = list(dataset.images.select_related("object_class").order_by("index"))
    class_names = sorted({row.object_class.name for row in rows if row.object_class})
    class_index = {name: index for index, name in enumerate(class_names)}
    sizes = {(row.height, row.width) for row in rows}
    if len(sizes) != 1:
        raise RunInputError(
            f"Dataset {dataset.name!r} has images of several sizes {sorted(sizes)[:4]}; training needs one size."
        )
    height, width = sizes.pop()
    images = torch.empty((len(rows), 3, height, width), dtype=torch.uint8)
    labels = torch.empty(len(rows), dtype=torch.int64)
    reader = BrodenReader(dataset.root)
    if progress:
        progress.phase("Loading images", total=len(rows))
    for position, (row, broden_row) in enumerate(zip(rows, reader.rows())):
        images[position] = torch.from_numpy(np.ascontiguousarray(reader.load_image(broden_row).transpose(2, 0, 1)))
        labels[position] = class_index[row.object_class.name]
        if progress:
            progress(position + 1, len(rows))
    is_train = torch.tensor([row.split == "train" for row in rows])
    return (images[is_train], labels[is_train]), (images[~is_train], labels[~is_train]), class_names


def demo_training_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.demo_network import build_demo_network, demo_network_target
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.engine.training import TensorBatches, train_classifier

    params = demo_training_params(**run.params)
    dataset = Dataset.objects.filter(name=params["dataset"]).first()
    if dataset is None:
        raise RunInputError(f"No dataset named {params['dataset']!r}; generate the probe world first.")
    if Network.objects.filter(name=params["name"]).exists():
        raise RunInputError(f"A network named {params['name']!r} already exists.")
    (train_images, train_labels), (val_images, val_labels), class_names = load_classification_tensors(dataset, progress)
    # Normalise with the training set's own channel statistics (our choice: the probe world is not ImageNet).
    as_float = train_images.float().div_(255)
    mean = as_float.mean(dim=(0, 2, 3)).tolist()
    std = as_float.std(dim=(0, 2, 3)).tolist()
    del as_float
    model = build_demo_network(len(class_names), seed=params["seed"])
    batches = len(TensorBatches(train_images, train_labels, params["batch_size"]))
    val_batches = len(TensorBatches(val_images, val_labels, params["batch_size"]))
    progress.phase(f"Training for {params['epochs']} epochs", total=params["epochs"] * (batches + val_batches))
    report = train_classifier(
        model,
        TensorBatches(train_images, train_labels, params["batch_size"], shuffle=True, seed=params["seed"]),
        TensorBatches(val_images, val_labels, params["batch_size"]),
        epochs=params["epochs"],
        lr=params["lr"],
        seed=params["seed"],
        device=torch.device(device),
        mean=mean,
        std=std,
        progress=progress,
    )
    out_dir = settings.UNITSCOPE_DATA_DIR / "networks" / params["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "weights.pt"
    torch.save({key: value.cpu() for key, value in model.state_dict().items()}, weights)
    (out_dir / "training_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    spec = NetworkSpec(
        kind=NetworkKind.MODULE,
        target=demo_network_target(),
        weights=str(weights),
        kwargs={"num_classes": len(class_names)},
        input_size=tuple(train_images.shape[2:]),
        mean=tuple(mean),
        std=tuple(std),
        class_names=tuple(class_names),
    )
    network = network_register(
        name=params["name"],
        spec=spec,
        trained_on=dataset,
        training_run=run,
        training_report=report.to_dict(),
        progress=progress,
        description=f"AlexNet-like CNN (five conv layers, no batch norm) trained on "
        f"{dataset.name} to classify {len(class_names)} object classes.",
    )
    return {
        "network": network.name,
        "val_accuracy": report.final_val_accuracy,
        "val_loss": report.final_val_loss,
        "epochs": params["epochs"],
        "classes": len(class_names),
        "train_images": int(train_images.shape[0]),
        "val_images": int(val_images.shape[0]),
    }


DEMO_TRAINING = register_job_kind(
    JobKind(
        name="train_demo_network",
        label="Train the demo network",
        queue=GPU_QUEUE,
        execute=demo_training_run_execute,
        params=DEMO_TRAINING_PARAMS,
        exporter=None,  # the trained network is registered; its weights file is on disk
        soft_time_limit=3 * 3600,
        time_limit=3 * 3600 + 120,
        description="Trains the small AlexNet-like CNN on the probe world's object classes and registers it.",
    )
)
