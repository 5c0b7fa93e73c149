from analysis.management.run_command import RunCommand
from analysis.services.datasets import pascal_part_import_run_start


class Command(RunCommand):
    help = (
        "Import PASCAL-Part (PATH holds Annotations_Part/, or is it; VOC JPEGImages/ beside it or via --images) "
        "as a dataset in the Broden format (a run: prints its id; --wait or --inline)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("path")
        parser.add_argument("--name", required=True)
        parser.add_argument("--images", help="folder of the VOC images (default: JPEGImages beside the annotations)")

    def start_run(self, *, inline, path, name, images, **options):
        return pascal_part_import_run_start(path=path, name=name, images=images, inline=inline)
