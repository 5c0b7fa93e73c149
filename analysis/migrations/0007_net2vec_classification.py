# Net2Vec §3.2 classification probes. Written by hand: depends on 0005 only (0006_part_detection is being
# written concurrently by another engineer; the lead reconciles the order).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('analysis', '0005_net2vecstudy_net2vecconcept'),
    ]

    operations = [
        migrations.AddField(
            model_name='net2vecconcept',
            name='all_pixels_val_iou',
            field=models.FloatField(blank=True, help_text="Val set IoU of the trivial mask 'every pixel of the images with the concept'.", null=True),
        ),
        migrations.AddField(
            model_name='net2vecstudy',
            name='classification_top_f',
            field=models.JSONField(default=list, help_text='Classification subset sizes F trained (§3.2.2).'),
        ),
        migrations.AddField(
            model_name='net2vecstudy',
            name='n_classification_concepts',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='net2vecstudy',
            name='n_classification_wins',
            field=models.PositiveIntegerField(default=0, help_text="Concepts whose combination's balanced val accuracy ≥ the single filter's (F = 1)."),
        ),
        migrations.CreateModel(
            name='Net2VecClassification',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('train_positives', models.PositiveIntegerField()),
                ('train_negatives', models.PositiveIntegerField()),
                ('val_positives', models.PositiveIntegerField()),
                ('val_negatives', models.PositiveIntegerField()),
                ('single_unit', models.PositiveIntegerField(help_text='0-based unit of largest |w| in the combination (F = 1).')),
                ('single_val_accuracy', models.FloatField(help_text='Balanced val accuracy of the retrained single-unit classifier.')),
                ('combination_val_accuracy', models.FloatField()),
                ('single_val_ap', models.FloatField(help_text='Val average precision of the single-unit classifier.')),
                ('combination_val_ap', models.FloatField()),
                ('top_f_val_accuracy', models.JSONField(default=dict, help_text='{F: balanced val accuracy of the top-F classifier}.')),
                ('top_f_val_ap', models.JSONField(default=dict, help_text='{F: val average precision of the top-F classifier}.')),
                ('embedding', models.JSONField(default=list, help_text="The learned w (per standard deviation of each unit's input).")),
                ('raw_weight', models.JSONField(default=list, help_text='The same classifier\'s w on raw pooled activations (eq. 5).')),
                ('bias', models.FloatField(default=0.0, help_text="Eq. 5's b, with raw_weight.")),
                ('concept', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='classifications', to='analysis.net2vecstudy')),
            ],
            options={
                'ordering': ['-train_positives', 'concept__number'],
                'constraints': [models.UniqueConstraint(fields=('study', 'concept'), name='unique_net2vec_classification')],
            },
        ),
    ]
