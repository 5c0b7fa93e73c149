import json

from django.core.management.base import BaseCommand, CommandError

from analysis.services.runs import RunInputError


class Command(BaseCommand):
    help = ("Register a network: --arch NAME [--weights FILE] (torchvision), --torchscript FILE, or "
            "--module pkg.mod:callable [--weights FILE]. Lists its layers with units and receptive fields.")

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--arch", help="torchvision architecture, e.g. alexnet, vgg16, resnet18")
        source.add_argument("--torchscript", help="a TorchScript file (torch.jit.save)")
        source.add_argument("--module", help="'pkg.mod:callable' returning an nn.Module")
        parser.add_argument("--weights", help="a state dict file (loaded with weights_only=True)")
        parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the builder, e.g. "
                                                           "'{\"num_classes\": 20}'")
        parser.add_argument("--input-size", type=int, nargs="+", default=[224], metavar="PX",
                            help="H [W] (default 224)")
        parser.add_argument("--mean", type=float, nargs=3, default=None, help="default: ImageNet's")
        parser.add_argument("--std", type=float, nargs=3, default=None, help="default: ImageNet's")
        parser.add_argument("--classes", help="a text file with one class name per line")
        parser.add_argument("--description", default="")

    def handle(self, *args, name, arch, torchscript, module, weights, kwargs, input_size, mean, std, classes,
               description, **options):
        from analysis.engine.networks import IMAGENET_MEAN, IMAGENET_STD, NetworkKind, NetworkSpec
        from analysis.services.networks import network_register

        try:
            builder_kwargs = json.loads(kwargs)
        except json.JSONDecodeError as error:
            raise CommandError(f"--kwargs is not JSON: {error}") from error
        kind, target = ((NetworkKind.TORCHVISION, arch) if arch else
                        (NetworkKind.TORCHSCRIPT, torchscript) if torchscript else (NetworkKind.MODULE, module))
        class_names = None
        if classes:
            with open(classes) as handle:
                class_names = tuple(line.strip() for line in handle if line.strip())
        try:
            spec = NetworkSpec(kind=kind, target=target, weights=weights, kwargs=builder_kwargs,
                               input_size=(input_size[0], input_size[-1]), mean=tuple(mean or IMAGENET_MEAN),
                               std=tuple(std or IMAGENET_STD), class_names=class_names)
            network = network_register(name=name, spec=spec, description=description)
        except (ValueError, RunInputError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"registered network {network.name} ({network.layers.count()} layers)")
        for layer in network.layers.all():
            rf = layer.geometry
            geometry = (f"rf {rf.size[0]:g}×{rf.size[1]:g} stride {rf.stride[0]:g} offset {rf.offset[0]:g}"
                        + (" ✓" if layer.rf_verified else "") if rf is not None else "rf unknown")
            self.stdout.write(f"  {layer.name:<28} {layer.units:>5} units  {layer.out_height}×{layer.out_width}  "
                              f"{geometry}")
