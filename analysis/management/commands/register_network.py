import json
import time

from django.core.management.base import BaseCommand, CommandError

from analysis.services.runs import RunInputError


class PrintedProgress:
    """Registration progress on the terminal: each phase on its own line, with a count where it has one."""

    def __init__(self, stream):
        self.stream = stream
        self.started = time.monotonic()
        self.last = 0.0
        self.name = ""

    def phase(self, name: str, total: int = 0) -> None:
        self.name = name
        self.stream.write(f"[{time.monotonic() - self.started:6.1f}s] {name}")

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if total and (done >= total or now - self.last >= 1.0):
            self.last = now
            self.stream.write(f"[{now - self.started:6.1f}s]   {self.name}: {done}/{total}")


class Command(BaseCommand):
    help = (
        "Register a network: --arch NAME [--weights FILE] (torchvision), or --module pkg.mod:callable "
        "[--weights FILE] (a state dict, or a TorchScript archive whose parameters are read). Lists its layers "
        "(one per call site) with units and receptive fields, printing progress."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--arch", help="torchvision architecture, e.g. alexnet, vgg16, resnet18")
        source.add_argument("--torchscript", help="a TorchScript file: refused with the reason and the way round it")
        source.add_argument("--module", help="'pkg.mod:callable' returning an nn.Module")
        parser.add_argument(
            "--weights",
            help="a state dict file (loaded with weights_only=True) or a TorchScript archive of the same architecture",
        )
        parser.add_argument(
            "--kwargs", default="{}", help="JSON keyword arguments for the builder, e.g. '{\"num_classes\": 20}'"
        )
        parser.add_argument(
            "--input-size",
            type=int,
            nargs="+",
            default=None,
            metavar="PX",
            help="H [W] (default: torchvision's for --arch, else 224)",
        )
        parser.add_argument(
            "--mean", type=float, nargs=3, default=None, help="default: torchvision's for --arch, else ImageNet's"
        )
        parser.add_argument(
            "--std", type=float, nargs=3, default=None, help="default: torchvision's for --arch, else ImageNet's"
        )
        parser.add_argument("--channel-order", choices=["RGB", "BGR"], default="RGB")
        parser.add_argument("--classes", help="a text file with one class name per line")
        parser.add_argument("--description", default="")

    def handle(
        self,
        *args,
        name,
        arch,
        torchscript,
        module,
        weights,
        kwargs,
        input_size,
        mean,
        std,
        channel_order,
        classes,
        description,
        **options,
    ):
        from analysis.engine.networks import (
            IMAGENET_MEAN,
            IMAGENET_STD,
            NetworkKind,
            NetworkSpec,
            torchvision_preprocessing,
        )
        from analysis.services.networks import network_register

        try:
            builder_kwargs = json.loads(kwargs)
        except json.JSONDecodeError as error:
            raise CommandError(f"--kwargs is not JSON: {error}") from error
        kind, target = (
            (NetworkKind.TORCHVISION, arch)
            if arch
            else (NetworkKind.TORCHSCRIPT, torchscript)
            if torchscript
            else (NetworkKind.MODULE, module)
        )
        defaults = (
            torchvision_preprocessing(arch)
            if arch
            else {"input_size": (224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        )
        size = (input_size[0], input_size[-1]) if input_size else defaults["input_size"]
        class_names = None
        if classes:
            with open(classes) as handle:
                class_names = tuple(line.strip() for line in handle if line.strip())
        started = time.monotonic()
        try:
            spec = NetworkSpec(
                kind=kind,
                target=target,
                weights=weights,
                kwargs=builder_kwargs,
                input_size=size,
                mean=tuple(mean or defaults["mean"]),
                std=tuple(std or defaults["std"]),
                class_names=class_names,
                channel_order=channel_order,
            )
            network = network_register(
                name=name, spec=spec, description=description, progress=PrintedProgress(self.stdout)
            )
        except (ValueError, RunInputError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"registered network {network.name} ({network.layers.count()} layers) in "
            f"{time.monotonic() - started:.1f} s; input {network.input_height}×{network.input_width} "
            f"{network.channel_order}, mean {network.mean}, std {network.std}"
        )
        for layer in network.layers.all():
            rf = layer.geometry
            geometry = (
                f"rf {rf.size[0]:g}×{rf.size[1]:g} stride {rf.stride[0]:g} offset {rf.offset[0]:g}"
                + (" ✓" if layer.rf_verified else "")
                if rf is not None
                else "rf unknown"
            )
            self.stdout.write(
                f"  {layer.name:<28} {layer.units:>5} units  {layer.out_height}×{layer.out_width}  {geometry}"
            )
