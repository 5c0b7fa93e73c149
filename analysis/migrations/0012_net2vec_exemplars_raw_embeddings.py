"""Net2Vec (#16.3): non-extremal exemplars per concept; classification embeddings are eq. 5's raw weights (the
standardised ones move to ``standardized_weight``)."""
from django.db import migrations, models


def raw_embeddings(apps, schema_editor):
    """Rows written before: ``embedding`` held the standardised w and ``standardized_weight`` (renamed from
    ``raw_weight``) the raw one — swap them."""
    Net2VecClassification = apps.get_model("analysis", "Net2VecClassification")
    for row in Net2VecClassification.objects.all().only("pk", "embedding", "standardized_weight"):
        row.embedding, row.standardized_weight = row.standardized_weight, row.embedding
        row.save(update_fields=["embedding", "standardized_weight"])


class Migration(migrations.Migration):

    dependencies = [
        ("analysis", "0011_network_preprocessing_checks_ceiling"),
    ]

    operations = [
        migrations.AddField(
            model_name="net2vecconcept",
            name="exemplars",
            field=models.JSONField(default=dict, help_text="Non-extremal exemplars (§5.1, Figs. 7–8): {'single'|'combination': {rows, ious, images, zero, mean, std}}, one val image per decile of the non-zero IoU_ind."),
        ),
        migrations.RenameField(model_name="net2vecclassification", old_name="raw_weight",
                               new_name="standardized_weight"),
        migrations.AlterField(
            model_name="net2vecclassification",
            name="standardized_weight",
            field=models.JSONField(default=list, help_text="The same classifier's w per standard deviation of each unit's input (training's)."),
        ),
        migrations.AlterField(
            model_name="net2vecclassification",
            name="embedding",
            field=models.JSONField(default=list, help_text="Eq. 5's w on raw pooled activations (the embedding, §5.3)."),
        ),
        migrations.AlterField(
            model_name="net2vecclassification",
            name="bias",
            field=models.FloatField(default=0.0, help_text="Eq. 5's b, with the raw w."),
        ),
        migrations.RunPython(raw_embeddings, raw_embeddings)  # a swap: its own inverse,
    ]
